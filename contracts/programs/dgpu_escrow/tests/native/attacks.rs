//! Each instruction's success path and the attacks on it, through the real entrypoint:
//! wrong signer, wrong mint, a substituted vault / destination / escrow, claiming twice,
//! claiming before start, top-up after expiry, close by a stranger, overflowing rates, a clock
//! that goes backwards, the fee cap, the pause, no revival after close, dust in the vault.
//! Every refused instruction is checked to change nothing.

use crate::harness::*;
use anchor_lang::error::ErrorCode as Anchor;
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::Instruction;
use anchor_lang::AccountDeserialize;
use dgpu_escrow::{accounts, instruction, Config, EscrowStatus, OpenArgs, TopUpArgs, UpdateConfigArgs};
use solana_keypair::Keypair;
use solana_signer::Signer;

const T0: i64 = 1_700_000_000;
const RATE: u64 = 23_834;

type Snapshot = ([u64; 4], Option<Vec<u8>>, Option<Vec<u8>>);

async fn snapshot(env: &mut Env) -> Snapshot {
    let balances = env.balances().await;
    let (escrow, config) = (env.escrow(), env.config);
    let escrow = env.ctx.banks_client.get_account(escrow).await.unwrap().map(|a| a.data);
    let config = env.ctx.banks_client.get_account(config).await.unwrap().map(|a| a.data);
    (balances, escrow, config)
}

/// Sends `ixs` (`signer` signs and pays) and checks it fails with `want` and changes nothing.
async fn refused(ixs: &[Instruction], env: &mut Env, signer: &Keypair, want: &str) {
    refused_by(ixs, env, signer, &[], want).await;
}

/// As `refused`, with more signers.
async fn refused_by(ixs: &[Instruction], env: &mut Env, payer: &Keypair, signers: &[&Keypair], want: &str) {
    let before = snapshot(env).await;
    let got = env.send_as(ixs, payer, signers).await;
    assert_eq!(got, Err(want.to_string()), "expected {want}");
    assert_eq!(snapshot(env).await, before, "a refused instruction changed state");
}

fn token_2022_id() -> Pubkey {
    use std::str::FromStr;
    Pubkey::from_str("TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb").unwrap()
}

fn kp(k: &Keypair) -> Keypair {
    k.insecure_clone()
}

/// A ledger with rental 7 open at T0 (60 minutes at RATE, deadline T0 + 300).
async fn opened_with(setup: Setup, extra: impl FnOnce(&mut solana_program_test::ProgramTest, &Parties)) -> Env {
    let mut env = Env::with(setup, extra).await;
    env.set_time(T0).await;
    let args = env.default_open(T0);
    env.do_open(args).await;
    env
}

async fn opened() -> Env {
    opened_with(Setup::default(), |_, _| {}).await
}

/// As `opened`, started by the provider at T0 + 60.
async fn started() -> Env {
    let mut env = opened().await;
    env.set_time(T0 + 60).await;
    env.do_action("start", "provider", None).await.expect("start");
    env
}

fn update_ix(env: &Env, admin: &Pubkey, args: UpdateConfigArgs) -> Instruction {
    ix(accounts::UpdateConfig { admin: *admin, config: env.config }, instruction::UpdateConfig { args })
}

fn set_treasury_ix(env: &Env, admin: &Pubkey, treasury: Pubkey, owner: &Pubkey) -> Instruction {
    ix(
        accounts::SetTreasury {
            admin_config: accounts::UpdateConfig { admin: *admin, config: env.config },
            treasury,
            treasury_owner: *owner,
        },
        instruction::SetTreasury {},
    )
}

fn no_change() -> UpdateConfigArgs {
    UpdateConfigArgs { new_admin: None, fee_bps: None, paused: None }
}

async fn config(env: &mut Env) -> Config {
    let data = env.ctx.banks_client.get_account(env.config).await.unwrap().unwrap().data;
    Config::try_deserialize(&mut &data[..]).unwrap()
}

/// A second mint and token accounts of it for renter, plus a stranger's account of the real mint.
fn extra_accounts(pt: &mut solana_program_test::ProgramTest, p: &Parties, fake_mint: Pubkey) {
    let mint = p.mint.pubkey();
    add_mint(pt, fake_mint, p.admin.pubkey(), 1_000_000_000, 6);
    add_token_account(pt, ata(&p.renter.pubkey(), &fake_mint), fake_mint, p.renter.pubkey(), 1_000_000_000);
    add_token_account(pt, ata(&p.stranger.pubkey(), &mint), mint, p.stranger.pubkey(), 0);
    add_token_account(pt, ata(&p.provider.pubkey(), &fake_mint), fake_mint, p.provider.pubkey(), 0);
}

// ---------------------------------------------------------------- config

#[tokio::test]
async fn config_fee_is_capped_and_admin_only() {
    let mut env = Env::new(Setup { init_config: false, ..Setup::default() }).await;
    let admin = kp(&env.p.admin);
    let stranger = kp(&env.p.stranger);

    // only ADMIN (fixed at build time) may create the config, whoever comes first
    assert_eq!((admin.pubkey(), dgpu_escrow::ADMIN), (dgpu_escrow::DEV_ADMIN, dgpu_escrow::DEV_ADMIN));
    let mut by_stranger = env.ix_initialize_config(500);
    by_stranger.accounts[0].pubkey = stranger.pubkey();
    refused(&[by_stranger], &mut env, &stranger, "Unauthorized").await;
    assert!(!env.exists(env.config).await, "a stranger created the config");
    let too_high = env.ix_initialize_config(2_001);
    refused(&[too_high], &mut env, &admin, "FeeTooHigh").await;
    env.send(&[env.ix_initialize_config(2_000)], &[&admin]).await.expect("init at the cap");
    let c = config(&mut env).await;
    assert_eq!((c.admin, c.mint, c.treasury, c.fee_bps, c.paused), (admin.pubkey(), env.mint, env.treasury, 2_000, false));
    assert_eq!(c.bump, Pubkey::find_program_address(&[b"config"], &dgpu_escrow::ID).1, "canonical bump stored");
    // a second initialize_config cannot take the config over
    let mut again = env.ix_initialize_config(0);
    again.accounts[0].pubkey = stranger.pubkey();
    assert!(env.send_as(&[again], &stranger, &[]).await.is_err());

    let by_stranger = update_ix(&env, &stranger.pubkey(), UpdateConfigArgs { fee_bps: Some(0), ..no_change() });
    refused(&[by_stranger], &mut env, &stranger, "Unauthorized").await;
    let over_cap = update_ix(&env, &admin.pubkey(), UpdateConfigArgs { fee_bps: Some(2_001), ..no_change() });
    refused(&[over_cap], &mut env, &admin, "FeeTooHigh").await;

    // the admin hands over; the old admin is out
    let hand_over = update_ix(&env, &admin.pubkey(), UpdateConfigArgs { new_admin: Some(stranger.pubkey()), fee_bps: Some(100), paused: None });
    env.send(&[hand_over], &[&admin]).await.expect("hand over");
    let c = config(&mut env).await;
    assert_eq!((c.admin, c.fee_bps), (stranger.pubkey(), 100));
    let old = update_ix(&env, &admin.pubkey(), no_change());
    refused(&[old], &mut env, &admin, "Unauthorized").await;
}

#[tokio::test]
async fn the_treasury_moves_only_with_its_new_owners_signature() {
    let fake_mint = Keypair::new().pubkey();
    let mut env = Env::with(Setup::default(), |pt, p| extra_accounts(pt, p, fake_mint)).await;
    let (admin, stranger, provider) = (kp(&env.p.admin), kp(&env.p.stranger), kp(&env.p.provider));
    let old = env.treasury;
    let new = env.provider_token();
    // update_config has no treasury at all: changing the fee keeps it
    let fee = update_ix(&env, &admin.pubkey(), UpdateConfigArgs { fee_bps: Some(100), ..no_change() });
    env.send(&[fee], &[&admin]).await.expect("update fee");
    assert_eq!((config(&mut env).await.treasury, config(&mut env).await.fee_bps), (old, 100));

    // the new treasury's owner must sign
    let mut unsigned = set_treasury_ix(&env, &admin.pubkey(), new, &provider.pubkey());
    unsigned.accounts[3].is_signer = false;
    refused(&[unsigned], &mut env, &admin, &anchor(Anchor::AccountNotSigner)).await;
    // ... and be that account's owner
    let not_owner = set_treasury_ix(&env, &admin.pubkey(), new, &stranger.pubkey());
    refused_by(&[not_owner], &mut env, &admin, &[&stranger], &anchor(Anchor::ConstraintTokenOwner)).await;
    // of the pinned mint
    let wrong_mint = set_treasury_ix(&env, &admin.pubkey(), ata(&provider.pubkey(), &fake_mint), &provider.pubkey());
    refused_by(&[wrong_mint], &mut env, &admin, &[&provider], &anchor(Anchor::ConstraintTokenMint)).await;
    // and only the admin sets it
    let by_stranger = set_treasury_ix(&env, &stranger.pubkey(), new, &provider.pubkey());
    refused_by(&[by_stranger], &mut env, &stranger, &[&provider], "Unauthorized").await;
    assert_eq!(config(&mut env).await.treasury, old);

    let ok = set_treasury_ix(&env, &admin.pubkey(), new, &provider.pubkey());
    env.send_as(&[ok], &admin, &[&provider]).await.expect("set treasury");
    let c = config(&mut env).await;
    assert_eq!((c.treasury, c.fee_bps, c.admin), (new, 100, admin.pubkey()));
}

#[tokio::test]
async fn pause_blocks_only_open() {
    let mut env = opened().await;
    let (renter, provider, admin) = (kp(&env.p.renter), kp(&env.p.provider), kp(&env.p.admin));
    // a second rental, never started
    env.rental_id = 9;
    env.do_open(OpenArgs { rental_id: 9, ..env.default_open(T0) }).await;
    env.rental_id = 7;
    env.set_time(T0 + 60).await;
    env.do_action("start", "provider", None).await.unwrap();

    let pause = update_ix(&env, &admin.pubkey(), UpdateConfigArgs { paused: Some(true), ..no_change() });
    env.send(&[pause], &[&admin]).await.unwrap();
    assert!(config(&mut env).await.paused);

    env.rental_id = 8;
    let open = ix(env.open_accounts(&renter.pubkey()), instruction::Open { args: OpenArgs { rental_id: 8, ..env.default_open(T0 + 60) } });
    refused(&[open], &mut env, &renter, "Paused").await;

    env.rental_id = 7;
    env.set_time(T0 + 60 + 120).await;
    env.do_action("claim", "provider", None).await.expect("claim while paused");
    env.do_action("top_up", "renter", Some(5)).await.expect("top_up while paused");
    env.do_action("close", "renter", None).await.expect("close while paused");
    env.rental_id = 9;
    env.set_time(T0 + 300).await;
    env.do_action("refund_unstarted", "renter", None).await.expect("refund while paused");
    let _ = provider;
}

// ---------------------------------------------------------------- open

#[tokio::test]
async fn open_success_path() {
    let mut env = opened().await;
    let e = env.escrow_state().await.expect("escrow");
    let deposited = RATE * 60;
    assert_eq!(e.status, EscrowStatus::Open);
    assert_eq!((e.renter, e.provider, e.mint), (env.p.renter.pubkey(), env.p.provider.pubkey(), env.mint));
    assert_eq!((e.rental_id, e.rate_per_minute, e.max_minutes, e.deposited, e.fee_bps), (7, RATE, 60, deposited, 500));
    assert_eq!((e.start_deadline, e.started_at, e.claimed_minutes, e.version), (T0 + 300, None, 0, 1));
    let (_, bump) = Pubkey::find_program_address(
        &[b"escrow", env.p.renter.pubkey().as_ref(), env.p.provider.pubkey().as_ref(), &7u64.to_le_bytes()],
        &dgpu_escrow::ID,
    );
    assert_eq!(e.bump, bump, "canonical bump stored");
    assert_eq!(env.balances().await, [1_000_000_000 - deposited, 0, 0, deposited]);
    // one vault per rental: a second rental has its own
    env.rental_id = 8;
    env.do_open(OpenArgs { rental_id: 8, ..env.default_open(T0) }).await;
    let second_vault = env.vault();
    env.rental_id = 7;
    assert_ne!(second_vault, env.vault());
    assert_eq!(env.balance(second_vault).await, deposited);
}

#[tokio::test]
async fn open_refuses_wrong_mint_party_and_token_account() {
    let fake_mint = Keypair::new().pubkey();
    let mut env = Env::with(Setup::default(), |pt, p| extra_accounts(pt, p, fake_mint)).await;
    env.set_time(T0).await;
    let renter = kp(&env.p.renter);
    let args = env.default_open(T0);

    // the mint is pinned by the config
    let mut a = env.open_accounts(&renter.pubkey());
    a.mint = fake_mint;
    a.vault = ata(&a.escrow, &fake_mint);
    a.renter_token = ata(&renter.pubkey(), &fake_mint);
    refused(&[ix(a, instruction::Open { args: args.clone() })], &mut env, &renter, "InvalidMint").await;

    // paying from somebody else's token account
    let mut a = env.open_accounts(&renter.pubkey());
    a.renter_token = ata(&env.p.stranger.pubkey(), &env.mint);
    refused(&[ix(a, instruction::Open { args: args.clone() })], &mut env, &renter, &anchor(Anchor::ConstraintTokenOwner)).await;

    // renter and provider must differ
    let mut a = env.open_accounts(&renter.pubkey());
    a.provider = renter.pubkey();
    a.escrow = escrow_pda(&renter.pubkey(), &renter.pubkey(), 7);
    a.vault = ata(&a.escrow, &env.mint);
    refused(&[ix(a, instruction::Open { args: args.clone() })], &mut env, &renter, "SameParty").await;

    // a vault that is not the escrow's ATA
    let mut a = env.open_accounts(&renter.pubkey());
    a.vault = ata(&env.p.stranger.pubkey(), &env.mint);
    let got = env.send(&[ix(a, instruction::Open { args: args.clone() })], &[&renter]).await;
    assert!(got.is_err(), "substituted vault accepted");

    // another token program
    let mut a = env.open_accounts(&renter.pubkey());
    a.token_program = token_2022_id();
    let got = env.send(&[ix(a, instruction::Open { args: args.clone() })], &[&renter]).await;
    assert!(got.is_err(), "token-2022 accepted");

    // overflowing deposit, zero amounts, past deadline (order of the rules)
    for (bad, want) in [
        (OpenArgs { rate_per_minute: u64::MAX, max_minutes: 2, ..args.clone() }, "Overflow"),
        (OpenArgs { rate_per_minute: 0, ..args.clone() }, "InvalidAmount"),
        (OpenArgs { max_minutes: 0, start_deadline: T0 - 1, ..args.clone() }, "InvalidAmount"),
        (OpenArgs { rate_per_minute: u64::MAX, start_deadline: T0, ..args.clone() }, "Overflow"),
        (OpenArgs { start_deadline: T0, ..args.clone() }, "InvalidDeadline"),
    ] {
        let a = env.open_accounts(&renter.pubkey());
        refused(&[ix(a, instruction::Open { args: bad })], &mut env, &renter, want).await;
    }

    env.do_open(args.clone()).await;
    // the same rental cannot be opened twice
    let a = env.open_accounts(&renter.pubkey());
    assert!(env.send(&[ix(a, instruction::Open { args })], &[&renter]).await.is_err());
}

#[tokio::test]
async fn open_accepts_a_vault_created_ahead_with_dust_and_close_returns_the_dust() {
    let mut env = opened_with(Setup::default(), |pt, p| {
        // someone creates the rental's vault ahead of `open` and drops 5 units in it
        let escrow = escrow_pda(&p.renter.pubkey(), &p.provider.pubkey(), 7);
        let mint = p.mint.pubkey();
        add_token_account(pt, ata(&escrow, &mint), mint, escrow, 5);
    })
    .await;
    let deposited = RATE * 60;
    assert_eq!(env.balances().await, [1_000_000_000 - deposited, 0, 0, deposited + 5]);
    env.set_time(T0 + 10).await;
    env.do_action("close", "renter", None).await.expect("close");
    assert_eq!(env.balances().await, [1_000_000_000 + 5, 0, 0, 0]);
    assert!(env.escrow_state().await.is_none(), "the escrow account is closed");
}

#[tokio::test]
async fn lamports_sent_ahead_to_the_escrow_and_vault_addresses_do_not_block_open() {
    // both addresses are derivable: someone funds them (system-owned, no data) before `open`
    let mut env = opened_with(Setup::default(), |pt, p| {
        let escrow = escrow_pda(&p.renter.pubkey(), &p.provider.pubkey(), 7);
        for address in [escrow, ata(&escrow, &p.mint.pubkey())] {
            pt.add_account(address, solana_account::Account { lamports: 1_000_000, ..Default::default() });
        }
    })
    .await;
    let deposited = RATE * 60;
    assert_eq!(env.balances().await, [1_000_000_000 - deposited, 0, 0, deposited]);
    assert_eq!(env.escrow_state().await.expect("escrow").deposited, deposited);
    env.set_time(T0 + 60).await;
    env.do_action("start", "provider", None).await.expect("start");
    env.set_time(T0 + 60 + 120).await;
    env.do_action("close", "renter", None).await.expect("close");
    let gross = RATE * 2;
    let fee = gross * 500 / 10_000;
    assert_eq!(env.balances().await, [1_000_000_000 - gross, gross - fee, fee, 0]);
}

// ---------------------------------------------------------------- start

#[tokio::test]
async fn start_rules() {
    let mut env = opened().await;
    let (renter, provider, stranger) = (kp(&env.p.renter), kp(&env.p.provider), kp(&env.p.stranger));
    for who in [&stranger, &renter] {
        let ix = ix(env.start_accounts(&who.pubkey()), instruction::Start {});
        refused(&[ix], &mut env, who, "Unauthorized").await;
    }
    env.set_time(T0 + 299).await;
    env.do_action("start", "provider", None).await.expect("start just before the deadline");
    assert_eq!(env.escrow_state().await.unwrap().started_at, Some(T0 + 299));
    let again = ix(env.start_accounts(&provider.pubkey()), instruction::Start {});
    refused(&[again], &mut env, &provider, "AlreadyStarted").await;

    let mut late = opened().await;
    late.set_time(T0 + 300).await;
    let provider = kp(&late.p.provider);
    let ix = ix(late.start_accounts(&provider.pubkey()), instruction::Start {});
    refused(&[ix], &mut late, &provider, "StartDeadlinePassed").await;
}

// ---------------------------------------------------------------- claim

#[tokio::test]
async fn claim_before_start_twice_and_by_others() {
    let mut env = opened().await;
    let (renter, provider, stranger) = (kp(&env.p.renter), kp(&env.p.provider), kp(&env.p.stranger));
    env.set_time(T0 + 200).await;
    let claim = ix(env.claim_accounts(&provider.pubkey()), instruction::Claim {});
    refused(&[claim.clone()], &mut env, &provider, "NotStarted").await;

    env.do_action("start", "provider", None).await.unwrap();
    env.set_time(T0 + 200 + 59).await;
    refused(&[claim.clone()], &mut env, &provider, "NothingToClaim").await;
    for who in [&renter, &stranger] {
        let ix = ix(env.claim_accounts(&who.pubkey()), instruction::Claim {});
        refused(&[ix], &mut env, who, "Unauthorized").await;
    }

    env.set_time(T0 + 200 + 600).await;
    env.send(&[claim.clone()], &[&provider]).await.expect("claim 10 minutes");
    let gross = RATE * 10;
    let fee = gross * 500 / 10_000;
    assert_eq!(env.balances().await, [1_000_000_000 - RATE * 60, gross - fee, fee, RATE * 50]);
    let e = env.escrow_state().await.unwrap();
    assert_eq!((e.claimed_minutes, e.paid, e.fee_paid), (10, gross - fee, fee));
    // claiming twice in the same minute pays nothing
    refused(&[claim], &mut env, &provider, "NothingToClaim").await;
}

#[tokio::test]
async fn claim_refuses_substituted_accounts() {
    let fake_mint = Keypair::new().pubkey();
    let mut env = opened_with(Setup::default(), |pt, p| extra_accounts(pt, p, fake_mint)).await;
    // a second rental, to steal its vault
    env.rental_id = 8;
    env.do_open(OpenArgs { rental_id: 8, ..env.default_open(T0) }).await;
    let other_vault = env.vault();
    let other_escrow = env.escrow();
    env.rental_id = 7;
    env.set_time(T0 + 60).await;
    env.do_action("start", "provider", None).await.unwrap();
    env.set_time(T0 + 60 + 600).await;
    let provider = kp(&env.p.provider);
    let stranger_token = ata(&env.p.stranger.pubkey(), &env.mint);
    let claim = |a: accounts::Claim| ix(a, instruction::Claim {});

    let mut a = env.claim_accounts(&provider.pubkey());
    a.vault = other_vault;
    refused(&[claim(a)], &mut env, &provider, "InvalidVault").await;
    let mut a = env.claim_accounts(&provider.pubkey());
    a.vault = env.renter_token();
    refused(&[claim(a)], &mut env, &provider, "InvalidVault").await;
    let mut a = env.claim_accounts(&provider.pubkey());
    a.provider_token = stranger_token;
    refused(&[claim(a)], &mut env, &provider, &anchor(Anchor::ConstraintTokenOwner)).await;
    let mut a = env.claim_accounts(&provider.pubkey());
    a.treasury = stranger_token;
    refused(&[claim(a)], &mut env, &provider, "InvalidTreasury").await;
    let mut a = env.claim_accounts(&provider.pubkey());
    a.mint = fake_mint;
    a.provider_token = ata(&provider.pubkey(), &fake_mint);
    refused(&[claim(a)], &mut env, &provider, "InvalidMint").await;
    let mut a = env.claim_accounts(&provider.pubkey());
    a.token_program = token_2022_id();
    refused(&[claim(a)], &mut env, &provider, &anchor(Anchor::InvalidProgramId)).await;
    // another rental's escrow with this rental's vault
    let mut a = env.claim_accounts(&provider.pubkey());
    a.escrow = other_escrow;
    refused(&[claim(a)], &mut env, &provider, "InvalidVault").await;

    // a forged escrow: this escrow's bytes at another address, owned by the program
    let real = env.ctx.banks_client.get_account(env.escrow()).await.unwrap().unwrap();
    let forged = Keypair::new().pubkey();
    env.set_account(forged, real.clone());
    let mut a = env.claim_accounts(&provider.pubkey());
    a.escrow = forged;
    refused(&[claim(a)], &mut env, &provider, &anchor(Anchor::ConstraintSeeds)).await;
    // the same bytes owned by another program
    let mut foreign = real;
    foreign.owner = anchor_spl::token::ID;
    env.set_account(forged, foreign);
    let mut a = env.claim_accounts(&provider.pubkey());
    a.escrow = forged;
    refused(&[claim(a)], &mut env, &provider, &anchor(Anchor::AccountOwnedByWrongProgram)).await;

    env.send(&[claim(env.claim_accounts(&provider.pubkey()))], &[&provider]).await.expect("honest claim");
}

#[tokio::test]
async fn claim_refuses_the_same_token_account_twice() {
    let mut env = started().await;
    let (admin, provider) = (kp(&env.p.admin), kp(&env.p.provider));
    // the admin points the treasury at the provider's own token account
    let provider_token = env.provider_token();
    let ix0 = set_treasury_ix(&env, &admin.pubkey(), provider_token, &provider.pubkey());
    env.send_as(&[ix0], &admin, &[&provider]).await.unwrap();
    env.treasury = provider_token;
    env.set_time(T0 + 60 + 180).await;
    let claim = ix(env.claim_accounts(&provider.pubkey()), instruction::Claim {});
    refused(&[claim], &mut env, &provider, &anchor(Anchor::ConstraintDuplicateMutableAccount)).await;
    // another token account of the provider works
    let other = Keypair::new().pubkey();
    env.set_account(other, token_account(env.mint, provider.pubkey(), 0));
    let mut a = env.claim_accounts(&provider.pubkey());
    a.provider_token = other;
    env.send(&[ix(a, instruction::Claim {})], &[&provider]).await.expect("claim to another account");
    let gross = RATE * 3;
    let fee = gross * 500 / 10_000;
    assert_eq!(env.balance(other).await, gross - fee);
    assert_eq!(env.balance(provider_token).await, fee);
}

#[tokio::test]
async fn clock_going_backwards_takes_nothing_back() {
    let mut env = started().await;
    let provider = kp(&env.p.provider);
    env.set_time(T0 + 60 + 300).await;
    env.do_action("claim", "provider", None).await.unwrap();
    let after_claim = env.balances().await;
    // before the start itself
    env.set_time(T0).await;
    let claim = ix(env.claim_accounts(&provider.pubkey()), instruction::Claim {});
    refused(&[claim], &mut env, &provider, "NothingToClaim").await;
    env.set_time(i64::MIN).await;
    env.do_action("close", "provider", None).await.expect("close with a clock far in the past");
    assert!(env.escrow_state().await.is_none(), "the escrow account is closed");
    let [r, p, t, v] = env.balances().await;
    assert_eq!((p, t, v), (after_claim[1], after_claim[2], 0));
    assert_eq!(r, after_claim[0] + after_claim[3]);
}

// ---------------------------------------------------------------- top_up

#[tokio::test]
async fn top_up_rules() {
    let mut env = started().await;
    let (renter, stranger, provider) = (kp(&env.p.renter), kp(&env.p.stranger), kp(&env.p.provider));
    let top = |env: &Env, who: &Pubkey, extra: u32| ix(env.top_up_accounts(who), instruction::TopUp { args: TopUpArgs { extra_minutes: extra } });
    refused(&[top(&env, &stranger.pubkey(), 5)], &mut env, &stranger, "Unauthorized").await;
    refused(&[top(&env, &provider.pubkey(), 5)], &mut env, &provider, "Unauthorized").await;
    refused(&[top(&env, &renter.pubkey(), 0)], &mut env, &renter, "InvalidAmount").await;
    // max_minutes + extra overflows u32
    refused(&[top(&env, &renter.pubkey(), u32::MAX)], &mut env, &renter, "Overflow").await;

    env.set_time(T0 + 60 + 60 * 60 - 1).await;
    env.send(&[top(&env, &renter.pubkey(), 5)], &[&renter]).await.expect("top up before expiry");
    let e = env.escrow_state().await.unwrap();
    assert_eq!((e.max_minutes, e.deposited), (65, RATE * 65));
    assert_eq!(env.balances().await, [1_000_000_000 - RATE * 65, 0, 0, RATE * 65]);

    env.set_time(T0 + 60 + 60 * 65).await;
    refused(&[top(&env, &renter.pubkey(), 5)], &mut env, &renter, "Expired").await;
}

#[tokio::test]
async fn overflowing_rates_are_refused() {
    let big = Setup { renter: u64::MAX / 2, ..Setup::default() };
    let mut env = Env::new(big).await;
    env.set_time(T0).await;
    let renter = kp(&env.p.renter);
    // rate * extra overflows u64 while rate * max fits
    let rate = u64::MAX / 4 + 1;
    env.do_open(OpenArgs { rental_id: 7, rate_per_minute: rate, max_minutes: 1, start_deadline: T0 + 300 }).await;
    let ix1 = ix(env.top_up_accounts(&renter.pubkey()), instruction::TopUp { args: TopUpArgs { extra_minutes: 4 } });
    refused(&[ix1], &mut env, &renter, "Overflow").await;
    // deposited + rate * extra overflows u64
    let ix2 = ix(env.top_up_accounts(&renter.pubkey()), instruction::TopUp { args: TopUpArgs { extra_minutes: 3 } });
    refused(&[ix2], &mut env, &renter, "Overflow").await;
    // and the fee math of such a rental still closes exactly
    env.set_time(T0 + 60).await;
    env.do_action("start", "provider", None).await.unwrap();
    env.set_time(T0 + 120).await;
    env.do_action("settle_expired", "stranger", None).await.expect("settle");
    let fee = u64::try_from(u128::from(rate) * 500 / 10_000).unwrap();
    assert_eq!(env.balances().await, [u64::MAX / 2 - rate, rate - fee, fee, 0]);
}

// ---------------------------------------------------------------- close

#[tokio::test]
async fn close_by_stranger_refused_then_renter_closes_and_nothing_revives() {
    let fake_mint = Keypair::new().pubkey();
    let mut env = opened_with(Setup::default(), |pt, p| extra_accounts(pt, p, fake_mint)).await;
    env.set_time(T0 + 60).await;
    env.do_action("start", "provider", None).await.unwrap();
    env.set_time(T0 + 60 + 125).await;
    let (renter, stranger) = (kp(&env.p.renter), kp(&env.p.stranger));
    let close = |a: accounts::Close| ix(a, instruction::Close {});

    refused(&[close(env.close_accounts(&stranger.pubkey()))], &mut env, &stranger, "Unauthorized").await;
    // the vault's rent must go to the renter, the refund to the renter's account
    let mut a = env.close_accounts(&renter.pubkey());
    a.renter = stranger.pubkey();
    refused(&[close(a)], &mut env, &renter, &anchor(Anchor::ConstraintAddress)).await;
    let mut a = env.close_accounts(&renter.pubkey());
    a.renter_token = ata(&stranger.pubkey(), &env.mint);
    refused(&[close(a)], &mut env, &renter, &anchor(Anchor::ConstraintTokenOwner)).await;
    let mut a = env.close_accounts(&renter.pubkey());
    a.provider_token = ata(&stranger.pubkey(), &env.mint);
    refused(&[close(a)], &mut env, &renter, &anchor(Anchor::ConstraintTokenOwner)).await;

    let rent = env.lamports(env.vault()).await + env.lamports(env.escrow()).await;
    let renter_lamports = env.lamports(renter.pubkey()).await;
    env.send(&[close(env.close_accounts(&renter.pubkey()))], &[&renter]).await.expect("close");
    // 2 whole minutes paid, the rest refunded; the vault and the escrow account closed, their
    // rent to the renter (nothing stays locked)
    let gross = RATE * 2;
    let fee = gross * 500 / 10_000;
    assert_eq!(env.balances().await, [1_000_000_000 - gross, gross - fee, fee, 0]);
    assert!(!env.exists(env.vault()).await, "vault closed");
    assert!(!env.exists(env.escrow()).await, "escrow account closed");
    assert_eq!(env.lamports(renter.pubkey()).await, renter_lamports + rent);

    // closed is terminal: nothing works (the account is gone), and the rental never revives
    let gone = anchor(Anchor::AccountNotInitialized);
    refused(&[close(env.close_accounts(&renter.pubkey()))], &mut env, &renter, &gone).await;
    refused(&[close(env.close_accounts(&stranger.pubkey()))], &mut env, &stranger, &gone).await;
    let reopen = ix(env.open_accounts(&renter.pubkey()), instruction::Open { args: env.default_open(T0 + 60 + 125) });
    refused(&[reopen], &mut env, &renter, "RentalIdUsed").await;
    let state = renter_state(&mut env).await;
    assert_eq!((state.renter, state.last_rental_id, state.opened), (renter.pubkey(), 7, 1));
}

async fn renter_state(env: &mut Env) -> dgpu_escrow::Renter {
    let address = renter_pda(&env.p.renter.pubkey());
    let data = env.ctx.banks_client.get_account(address).await.unwrap().expect("renter state").data;
    dgpu_escrow::Renter::try_deserialize(&mut &data[..]).unwrap()
}

#[tokio::test]
async fn rental_ids_only_increase_so_no_rental_is_opened_twice() {
    let mut env = opened().await; // rental 7
    let renter = kp(&env.p.renter);
    for (id, want) in [(7, "RentalIdUsed"), (6, "RentalIdUsed"), (0, "RentalIdUsed")] {
        env.rental_id = id;
        let open = ix(env.open_accounts(&renter.pubkey()), instruction::Open { args: OpenArgs { rental_id: id, ..env.default_open(T0) } });
        let got = env.send(&[open], &[&renter]).await;
        // 7's escrow exists (init refuses it first); 6 and 0 are below the renter's last id
        if id == 7 {
            assert!(got.is_err(), "rental 7 opened twice");
        } else {
            assert_eq!(got, Err(want.to_string()), "rental {id}");
        }
    }
    // a higher id (any gap) opens; another renter has its own record
    env.rental_id = 1_000;
    env.do_open(OpenArgs { rental_id: 1_000, ..env.default_open(T0) }).await;
    let state = renter_state(&mut env).await;
    assert_eq!((state.last_rental_id, state.opened), (1_000, 2));
    env.rental_id = 7;
    env.set_time(T0 + 5).await;
    env.do_action("close", "renter", None).await.expect("close 7");
    env.rental_id = 8;
    let open = ix(env.open_accounts(&renter.pubkey()), instruction::Open { args: OpenArgs { rental_id: 8, ..env.default_open(T0 + 5) } });
    refused(&[open], &mut env, &renter, "RentalIdUsed").await;
}

#[tokio::test]
async fn provider_may_close_and_close_before_start_refunds_all() {
    let mut env = started().await;
    env.set_time(T0 + 60 + 59).await;
    env.do_action("close", "provider", None).await.expect("provider closes");
    assert_eq!(env.balances().await, [1_000_000_000, 0, 0, 0]);

    let mut env = opened().await;
    env.set_time(T0 + 1).await;
    env.do_action("close", "renter", None).await.expect("close before start");
    assert_eq!(env.balances().await, [1_000_000_000, 0, 0, 0]);
    assert!(env.escrow_state().await.is_none(), "the escrow account is closed");
}

#[tokio::test]
async fn dust_sent_to_the_vault_goes_back_to_the_renter() {
    let mut env = started().await;
    let (vault, escrow, mint) = (env.vault(), env.escrow(), env.mint);
    env.set_account(vault, token_account(mint, escrow, RATE * 60 + 7));
    env.set_time(T0 + 60 + 120).await;
    env.do_action("claim", "provider", None).await.expect("claim with dust");
    env.do_action("close", "renter", None).await.expect("close with dust");
    let gross = RATE * 2;
    let fee = gross * 500 / 10_000;
    assert_eq!(env.balances().await, [1_000_000_000 - gross + 7, gross - fee, fee, 0]);
}

#[tokio::test]
async fn a_vault_short_of_its_accounting_is_refused() {
    let mut env = started().await;
    let (vault, escrow, mint) = (env.vault(), env.escrow(), env.mint);
    env.set_account(vault, token_account(mint, escrow, RATE * 60 - 1));
    env.set_time(T0 + 60 + 60 * 60).await;
    let stranger = kp(&env.p.stranger);
    let settle = ix(env.settle_expired_accounts(), instruction::SettleExpired {});
    refused(&[settle], &mut env, &stranger, "VaultBalanceMismatch").await;
}

// ---------------------------------------------------------------- settle_expired

#[tokio::test]
async fn settle_expired_by_anyone_after_expiry_only() {
    let mut env = started().await;
    let stranger = kp(&env.p.stranger);
    env.set_time(T0 + 60 + 60 * 60 - 1).await;
    let settle = ix(env.settle_expired_accounts(), instruction::SettleExpired {});
    refused(&[settle.clone()], &mut env, &stranger, "NotExpired").await;
    env.set_time(T0 + 60 + 60 * 60).await;
    let rent = env.lamports(env.vault()).await + env.lamports(env.escrow()).await;
    let renter_lamports = env.lamports(env.p.renter.pubkey()).await;
    env.send_as(&[settle], &stranger, &[]).await.expect("settle by a stranger");
    let gross = RATE * 60;
    let fee = gross * 500 / 10_000;
    assert_eq!(env.balances().await, [1_000_000_000 - gross, gross - fee, fee, 0]);
    assert_eq!(env.lamports(env.p.renter.pubkey()).await, renter_lamports + rent);
    let settle = ix(env.settle_expired_accounts(), instruction::SettleExpired {});
    refused(&[settle], &mut env, &stranger, &anchor(Anchor::AccountNotInitialized)).await;

    // never started: never expires, so settle_expired cannot take the deposit
    let mut env = opened().await;
    env.set_time(T0 + 1_000_000).await;
    let stranger = kp(&env.p.stranger);
    let settle = ix(env.settle_expired_accounts(), instruction::SettleExpired {});
    refused(&[settle], &mut env, &stranger, "NotExpired").await;
}

// ---------------------------------------------------------------- refund_unstarted

#[tokio::test]
async fn refund_unstarted_rules() {
    let mut env = opened().await;
    let (renter, stranger, provider) = (kp(&env.p.renter), kp(&env.p.stranger), kp(&env.p.provider));
    let refund = |env: &Env, who: &Pubkey| ix(env.refund_unstarted_accounts(who), instruction::RefundUnstarted {});
    env.set_time(T0 + 299).await;
    refused(&[refund(&env, &renter.pubkey())], &mut env, &renter, "StartDeadlineNotReached").await;
    env.set_time(T0 + 300).await;
    refused(&[refund(&env, &stranger.pubkey())], &mut env, &stranger, "Unauthorized").await;
    refused(&[refund(&env, &provider.pubkey())], &mut env, &provider, "Unauthorized").await;
    env.send(&[refund(&env, &renter.pubkey())], &[&renter]).await.expect("refund");
    assert_eq!(env.balances().await, [1_000_000_000, 0, 0, 0]);
    assert!(env.escrow_state().await.is_none(), "the escrow account is closed");
    refused(&[refund(&env, &renter.pubkey())], &mut env, &renter, &anchor(Anchor::AccountNotInitialized)).await;

    let mut env = started().await;
    env.set_time(T0 + 300).await;
    let renter = kp(&env.p.renter);
    refused(&[refund(&env, &renter.pubkey())], &mut env, &renter, "AlreadyStarted").await;
}
