//! The native harness: the program's real entrypoint (`dgpu_escrow::entry`) as a builtin in
//! `solana-program-test`, next to the real SPL Token and Associated Token Account programs
//! (the BPF builds that solana-program-test bundles), a settable Clock, and helpers to build
//! instructions, send them and read balances and escrow state.

use anchor_lang::prelude::{Clock, Pubkey};
use anchor_lang::solana_program::instruction::Instruction;
use anchor_lang::solana_program::program_pack::Pack;
use anchor_lang::{AccountDeserialize, InstructionData, ToAccountMetas};
use anchor_spl::associated_token::{self, get_associated_token_address};
use dgpu_escrow::{accounts, instruction, EscrowError, SEED_CONFIG, SEED_ESCROW, SEED_RENTER};
use dgpu_escrow::{Escrow, InitializeConfigArgs, OpenArgs, TopUpArgs};
use solana_account::Account;
use solana_keypair::Keypair;
use solana_program_test::{BanksClientError, ProgramTest, ProgramTestContext};
use solana_signer::Signer;
use solana_transaction::{InstructionError, Transaction, TransactionError};
use spl_token_interface::state::{Account as TokenState, AccountState, Mint as MintState};
use std::collections::HashSet;

pub const TOKEN_PROGRAM: Pubkey = anchor_spl::token::ID;
pub const SYSTEM_PROGRAM: Pubkey = anchor_lang::solana_program::system_program::ID;
pub const SOL: u64 = 1_000_000_000;

pub use crate::entry::program_test;

/// Adds an initialized classic SPL Token mint.
pub fn add_mint(pt: &mut ProgramTest, mint: Pubkey, authority: Pubkey, supply: u64, decimals: u8) {
    let state = MintState {
        mint_authority: Some(authority).into(),
        supply,
        decimals,
        is_initialized: true,
        freeze_authority: None.into(),
    };
    let mut data = vec![0u8; MintState::LEN];
    state.pack_into_slice(&mut data);
    pt.add_account(mint, rent_exempt(data, TOKEN_PROGRAM));
}

/// Adds an initialized token account at `address` (an ATA or any other address).
pub fn add_token_account(pt: &mut ProgramTest, address: Pubkey, mint: Pubkey, owner: Pubkey, amount: u64) {
    pt.add_account(address, token_account(mint, owner, amount));
}

pub fn token_account(mint: Pubkey, owner: Pubkey, amount: u64) -> Account {
    let state = TokenState {
        mint,
        owner,
        amount,
        delegate: None.into(),
        state: AccountState::Initialized,
        is_native: None.into(),
        delegated_amount: 0,
        close_authority: None.into(),
    };
    let mut data = vec![0u8; TokenState::LEN];
    state.pack_into_slice(&mut data);
    rent_exempt(data, TOKEN_PROGRAM)
}

pub fn rent_exempt(data: Vec<u8>, owner: Pubkey) -> Account {
    let lamports = anchor_lang::prelude::Rent::default().minimum_balance(data.len());
    Account { lamports, data, owner, executable: false, rent_epoch: 0 }
}

pub fn add_wallet(pt: &mut ProgramTest, address: Pubkey) {
    pt.add_account(address, Account { lamports: 100 * SOL, ..Account::default() });
}

pub fn config_pda() -> Pubkey {
    Pubkey::find_program_address(&[SEED_CONFIG], &dgpu_escrow::ID).0
}

pub fn escrow_pda(renter: &Pubkey, provider: &Pubkey, rental_id: u64) -> Pubkey {
    Pubkey::find_program_address(
        &[SEED_ESCROW, renter.as_ref(), provider.as_ref(), &rental_id.to_le_bytes()],
        &dgpu_escrow::ID,
    )
    .0
}

pub fn renter_pda(renter: &Pubkey) -> Pubkey {
    Pubkey::find_program_address(&[SEED_RENTER, renter.as_ref()], &dgpu_escrow::ID).0
}

pub fn ata(owner: &Pubkey, mint: &Pubkey) -> Pubkey {
    get_associated_token_address(owner, mint)
}

pub fn ix<A: ToAccountMetas, D: InstructionData>(accounts: A, data: D) -> Instruction {
    Instruction {
        program_id: dgpu_escrow::ID,
        accounts: accounts.to_account_metas(None),
        data: data.data(),
    }
}

/// Every `EscrowError` variant with its Anchor code (6000 + declaration index).
pub fn escrow_error_names() -> Vec<(&'static str, u32)> {
    macro_rules! names {
        ($($v:ident),* $(,)?) => { vec![$((stringify!($v), u32::from(EscrowError::$v))),*] };
    }
    names!(
        InvalidAmount, Overflow, InvalidDeadline, Paused, Unauthorized, EscrowClosed,
        AlreadyStarted, StartDeadlinePassed, NotStarted, NothingToClaim, Expired, NotExpired,
        StartDeadlineNotReached, FeeTooHigh, SameParty, InvalidMint, InvalidTreasury,
        InvalidVault, VaultBalanceMismatch, DuplicateAccount, RentalIdUsed,
    )
}

/// A failed transaction, named: an `EscrowError` variant's name, `Custom(<code>)` for another
/// custom code (an Anchor framework error, see `anchor()`, or an SPL Token error), or the
/// runtime error's debug form.
pub fn error_name(err: &BanksClientError) -> String {
    let tx_err = match err {
        BanksClientError::TransactionError(e) => e.clone(),
        BanksClientError::SimulationError { err, .. } => err.clone(),
        other => return format!("{other:?}"),
    };
    match tx_err {
        TransactionError::InstructionError(_, InstructionError::Custom(code)) => escrow_error_names()
            .into_iter()
            .find(|(_, c)| *c == code)
            .map(|(name, _)| name.to_string())
            .unwrap_or_else(|| format!("Custom({code})")),
        other => format!("{other:?}"),
    }
}

/// The name `error_name` gives an Anchor framework error.
pub fn anchor(code: anchor_lang::error::ErrorCode) -> String {
    format!("Custom({})", u32::from(code))
}

/// The public development admin (`dgpu_escrow::DEV_ADMIN`): its seed is public by design.
pub fn dev_admin() -> Keypair {
    Keypair::new_from_array(*b"dgpu-escrow-dev-admin-NOT-SECRET")
}

/// The roles of a scenario.
pub struct Parties {
    pub admin: Keypair,
    pub renter: Keypair,
    pub provider: Keypair,
    pub stranger: Keypair,
    pub treasury_owner: Keypair,
    pub mint: Keypair,
}

impl Parties {
    /// Random keys, but the admin is the program's build-time `ADMIN` (the development admin).
    pub fn random() -> Self {
        Parties {
            admin: dev_admin(),
            renter: Keypair::new(),
            provider: Keypair::new(),
            stranger: Keypair::new(),
            treasury_owner: Keypair::new(),
            mint: Keypair::new(),
        }
    }

    pub fn by(&self, role: &str) -> &Keypair {
        match role {
            "renter" => &self.renter,
            "provider" => &self.provider,
            "stranger" => &self.stranger,
            "admin" => &self.admin,
            other => panic!("unknown role {other:?}"),
        }
    }
}

/// Starting balances (token base units) and the fee.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub fee_bps: u16,
    pub decimals: u8,
    pub renter: u64,
    pub provider: u64,
    pub treasury: u64,
    /// Create the provider's ATA up front (else only when `provider > 0`).
    pub provider_ata: bool,
    /// Run `initialize_config` (signed by the admin) once the ledger is up.
    pub init_config: bool,
    /// Tokens a stranger put at the vault address of rental 7 before it opens (the vault
    /// then already exists, created through the ATA program by anyone).
    pub vault: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            fee_bps: 500,
            decimals: 6,
            renter: 1_000_000_000,
            provider: 0,
            treasury: 0,
            provider_ata: true,
            init_config: true,
            vault: 0,
        }
    }
}

/// One running ledger with a configured program and a current rental.
pub struct Env {
    pub ctx: ProgramTestContext,
    pub p: Parties,
    pub mint: Pubkey,
    pub config: Pubkey,
    pub treasury: Pubkey,
    /// The rental the instruction builders address.
    pub rental_id: u64,
    sent: HashSet<Vec<u8>>,
}

impl Env {
    /// A ledger with wallets, the mint, the renter's/provider's ATAs and the treasury ATA
    /// (balances from `setup`), and `initialize_config` done with `setup.fee_bps`.
    pub async fn new(setup: Setup) -> Self {
        Self::with(setup, |_, _| {}).await
    }

    /// As `new`, with a hook to add accounts before the ledger starts.
    pub async fn with(setup: Setup, extra: impl FnOnce(&mut ProgramTest, &Parties)) -> Self {
        Self::start(setup, Parties::random(), extra).await
    }

    /// A ledger for the given parties.
    pub async fn start(setup: Setup, p: Parties, extra: impl FnOnce(&mut ProgramTest, &Parties)) -> Self {
        let mut pt = program_test();
        let mint = p.mint.pubkey();
        for k in [&p.admin, &p.renter, &p.provider, &p.stranger, &p.treasury_owner] {
            add_wallet(&mut pt, k.pubkey());
        }
        let supply = setup.renter + setup.provider + setup.treasury + setup.vault;
        add_mint(&mut pt, mint, p.admin.pubkey(), supply, setup.decimals);
        if setup.vault > 0 {
            let escrow = escrow_pda(&p.renter.pubkey(), &p.provider.pubkey(), 7);
            add_token_account(&mut pt, ata(&escrow, &mint), mint, escrow, setup.vault);
        }
        add_token_account(&mut pt, ata(&p.renter.pubkey(), &mint), mint, p.renter.pubkey(), setup.renter);
        if setup.provider_ata || setup.provider > 0 {
            add_token_account(&mut pt, ata(&p.provider.pubkey(), &mint), mint, p.provider.pubkey(), setup.provider);
        }
        let treasury = ata(&p.treasury_owner.pubkey(), &mint);
        add_token_account(&mut pt, treasury, mint, p.treasury_owner.pubkey(), setup.treasury);
        extra(&mut pt, &p);
        let ctx = pt.start_with_context().await;
        let mut env = Env {
            ctx,
            p,
            mint,
            config: config_pda(),
            treasury,
            rental_id: 7,
            sent: HashSet::new(),
        };
        if setup.init_config {
            let init = env.ix_initialize_config(setup.fee_bps);
            env.send(&[init], &[&env.p.admin.insecure_clone()]).await.expect("initialize_config");
        }
        env
    }

    pub fn ix_initialize_config(&self, fee_bps: u16) -> Instruction {
        ix(
            accounts::InitializeConfig {
                admin: self.p.admin.pubkey(),
                config: self.config,
                mint: self.mint,
                treasury: self.treasury,
                system_program: SYSTEM_PROGRAM,
            },
            instruction::InitializeConfig { args: InitializeConfigArgs { fee_bps } },
        )
    }

    pub fn escrow(&self) -> Pubkey {
        escrow_pda(&self.p.renter.pubkey(), &self.p.provider.pubkey(), self.rental_id)
    }

    pub fn vault(&self) -> Pubkey {
        ata(&self.escrow(), &self.mint)
    }

    pub fn renter_token(&self) -> Pubkey {
        ata(&self.p.renter.pubkey(), &self.mint)
    }

    pub fn provider_token(&self) -> Pubkey {
        ata(&self.p.provider.pubkey(), &self.mint)
    }

    // ---- accounts of each instruction, for the current rental; tests may alter them ----

    pub fn open_accounts(&self, renter: &Pubkey) -> accounts::Open {
        let escrow = escrow_pda(renter, &self.p.provider.pubkey(), self.rental_id);
        accounts::Open {
            renter: *renter,
            provider: self.p.provider.pubkey(),
            config: self.config,
            mint: self.mint,
            escrow,
            renter_state: renter_pda(renter),
            vault: ata(&escrow, &self.mint),
            renter_token: ata(renter, &self.mint),
            token_program: TOKEN_PROGRAM,
            associated_token_program: associated_token::ID,
            system_program: SYSTEM_PROGRAM,
        }
    }

    pub fn start_accounts(&self, by: &Pubkey) -> accounts::Start {
        accounts::Start { provider: *by, escrow: self.escrow() }
    }

    pub fn claim_accounts(&self, by: &Pubkey) -> accounts::Claim {
        accounts::Claim {
            provider: *by,
            config: self.config,
            escrow: self.escrow(),
            mint: self.mint,
            vault: self.vault(),
            provider_token: self.provider_token(),
            treasury: self.treasury,
            token_program: TOKEN_PROGRAM,
        }
    }

    pub fn top_up_accounts(&self, by: &Pubkey) -> accounts::TopUp {
        accounts::TopUp {
            renter: *by,
            escrow: self.escrow(),
            mint: self.mint,
            vault: self.vault(),
            renter_token: self.renter_token(),
            token_program: TOKEN_PROGRAM,
        }
    }

    pub fn close_accounts(&self, by: &Pubkey) -> accounts::Close {
        accounts::Close {
            caller: *by,
            config: self.config,
            escrow: self.escrow(),
            mint: self.mint,
            vault: self.vault(),
            renter: self.p.renter.pubkey(),
            renter_token: self.renter_token(),
            provider_token: self.provider_token(),
            treasury: self.treasury,
            token_program: TOKEN_PROGRAM,
        }
    }

    pub fn settle_expired_accounts(&self) -> accounts::SettleExpired {
        accounts::SettleExpired {
            config: self.config,
            escrow: self.escrow(),
            mint: self.mint,
            vault: self.vault(),
            renter: self.p.renter.pubkey(),
            renter_token: self.renter_token(),
            provider_token: self.provider_token(),
            treasury: self.treasury,
            token_program: TOKEN_PROGRAM,
        }
    }

    pub fn refund_unstarted_accounts(&self, by: &Pubkey) -> accounts::RefundUnstarted {
        accounts::RefundUnstarted {
            renter: *by,
            escrow: self.escrow(),
            mint: self.mint,
            vault: self.vault(),
            renter_token: self.renter_token(),
            token_program: TOKEN_PROGRAM,
        }
    }

    /// The instruction of a vector action by `by` (open's/top_up's arguments in `args`).
    pub fn action(&self, action: &str, by: &Pubkey, open: Option<OpenArgs>, extra: Option<u32>) -> Instruction {
        match action {
            "open" => ix(self.open_accounts(by), instruction::Open { args: open.expect("open args") }),
            "start" => ix(self.start_accounts(by), instruction::Start {}),
            "claim" => ix(self.claim_accounts(by), instruction::Claim {}),
            "top_up" => ix(
                self.top_up_accounts(by),
                instruction::TopUp { args: TopUpArgs { extra_minutes: extra.expect("extra_minutes") } },
            ),
            "close" => ix(self.close_accounts(by), instruction::Close {}),
            "settle_expired" => ix(self.settle_expired_accounts(), instruction::SettleExpired {}),
            "refund_unstarted" => ix(self.refund_unstarted_accounts(by), instruction::RefundUnstarted {}),
            other => panic!("unknown action {other:?}"),
        }
    }

    // ---- running ----

    /// Sets the Clock sysvar's unix_timestamp (the only time the program reads).
    pub async fn set_time(&mut self, at: i64) {
        let mut clock: Clock = self.ctx.banks_client.get_sysvar().await.expect("clock");
        clock.unix_timestamp = at;
        self.ctx.set_sysvar(&clock);
    }

    /// Sends one transaction paid by the test's payer and signed by `signers`; an error is
    /// named by `error_name`.
    pub async fn send(&mut self, ixs: &[Instruction], signers: &[&Keypair]) -> Result<(), String> {
        let payer = self.ctx.payer.insecure_clone();
        self.send_as(ixs, &payer, signers).await
    }

    /// Sends one transaction with fee payer `payer` (a signer too) and the other `signers`.
    /// A transaction identical to one already sent gets a fresh blockhash, so repeating a
    /// step is a new transaction and not a duplicate.
    pub async fn send_as(&mut self, ixs: &[Instruction], payer: &Keypair, signers: &[&Keypair]) -> Result<(), String> {
        let mut all: Vec<&Keypair> = vec![payer];
        all.extend(signers.iter().copied().filter(|k| k.pubkey() != payer.pubkey()));
        let mut blockhash = self.ctx.last_blockhash;
        loop {
            let tx = Transaction::new_signed_with_payer(ixs, Some(&payer.pubkey()), &all, blockhash);
            let key = tx.signatures[0].as_ref().to_vec();
            if self.sent.insert(key) {
                return self
                    .ctx
                    .banks_client
                    .process_transaction(tx)
                    .await
                    .map_err(|e| error_name(&e));
            }
            blockhash = self.ctx.get_new_latest_blockhash().await.expect("blockhash");
        }
    }

    // ---- reading ----

    /// A token account's balance; 0 when the account does not exist (a closed vault).
    pub async fn balance(&mut self, address: Pubkey) -> u64 {
        match self.ctx.banks_client.get_account(address).await.expect("get_account") {
            Some(account) if account.owner == TOKEN_PROGRAM && !account.data.is_empty() => {
                TokenState::unpack(&account.data).expect("token account").amount
            }
            _ => 0,
        }
    }

    pub async fn lamports(&mut self, address: Pubkey) -> u64 {
        self.ctx.banks_client.get_balance(address).await.expect("get_balance")
    }

    pub async fn exists(&mut self, address: Pubkey) -> bool {
        self.ctx.banks_client.get_account(address).await.expect("get_account").is_some()
    }

    pub async fn escrow_state_at(&mut self, address: Pubkey) -> Option<Escrow> {
        let account = self.ctx.banks_client.get_account(address).await.expect("get_account")?;
        if account.owner != dgpu_escrow::ID {
            return None;
        }
        Some(Escrow::try_deserialize(&mut &account.data[..]).expect("escrow account"))
    }

    pub async fn escrow_state(&mut self) -> Option<Escrow> {
        let escrow = self.escrow();
        self.escrow_state_at(escrow).await
    }

    /// (renter, provider, treasury, vault) token balances.
    pub async fn balances(&mut self) -> [u64; 4] {
        let (r, p, t, v) = (self.renter_token(), self.provider_token(), self.treasury, self.vault());
        [self.balance(r).await, self.balance(p).await, self.balance(t).await, self.balance(v).await]
    }

    /// Adds or replaces an account in the running ledger.
    pub fn set_account(&mut self, address: Pubkey, account: Account) {
        self.ctx.set_account(&address, &account.into());
    }

    // ---- the common steps (panic on failure) ----

    pub fn default_open(&self, now: i64) -> OpenArgs {
        OpenArgs { rental_id: self.rental_id, rate_per_minute: 23_834, max_minutes: 60, start_deadline: now + 300 }
    }

    pub async fn do_open(&mut self, args: OpenArgs) {
        let renter = self.p.renter.insecure_clone();
        let ix = ix(self.open_accounts(&renter.pubkey()), instruction::Open { args });
        self.send(&[ix], &[&renter]).await.expect("open");
    }

    pub async fn do_action(&mut self, action: &str, role: &str, extra: Option<u32>) -> Result<(), String> {
        let by = self.p.by(role).insecure_clone();
        let ix = self.action(action, &by.pubkey(), None, extra);
        self.send_as(&[ix], &by, &[]).await
    }
}
