//! The ledger behind the endpoint: one solana-program-test bank with the escrow program as a
//! native builtin, the real SPL Token and ATA programs, and a virtual clock.
//!
//! Theory of operation: the ledger lives on its own thread with its own single-threaded tokio
//! runtime, and handles one request at a time (`handle`). That runtime is driven only while a
//! request is handled, so program-test's blockhash ticker (one new blockhash per 6.4 ms, 150
//! kept) advances at most a tick or two per request instead of continuously: a blockhash stays
//! valid for about 150 requests instead of about one second. Before every request the Clock
//! sysvar's `unix_timestamp` is set to the virtual clock (`base + speed * wall elapsed`, moved
//! forward by `dgpu_advanceClock`). Transactions are simulated first (preflight), then executed
//! with `process_transaction_with_metadata`; the ledger keeps each landed transaction's status,
//! fee, balances before and after, and token balances (for getSignatureStatuses/getTransaction),
//! and every address a transaction named (for getProgramAccounts, which banks cannot scan).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::str::FromStr;
use std::time::Instant;

use anchor_lang::prelude::{Clock, Pubkey};
use anchor_lang::solana_program::program_pack::Pack;
use anchor_lang::solana_program::instruction::{AccountMeta, Instruction};
use anchor_lang::{InstructionData, ToAccountMetas};
use base64::Engine as _;
use serde_json::{json, Value};
use solana_account::Account;
use solana_keypair::Keypair;
use solana_program_test::{BanksClient, ProgramTestContext};
use solana_signer::Signer;
use solana_transaction::versioned::VersionedTransaction;
use solana_transaction::{Signature, Transaction, TransactionError, VersionedMessage};
use spl_token_interface::state::{Account as TokenState, Mint as MintState};

use crate::entry::program_test;

const TOKEN_PROGRAM: Pubkey = anchor_spl::token::ID;
const LAMPORTS_PER_SOL: u64 = 1_000_000_000;
/// Transactions whose status and metadata are kept (oldest forgotten first).
const MAX_RECORDS: usize = 100_000;
const MAX_MULTIPLE_ACCOUNTS: usize = 100;
const MAX_AIRDROP: u64 = 1_000 * LAMPORTS_PER_SOL;
/// A blockhash is valid for this many blocks (MAX_PROCESSING_AGE).
const BLOCKHASH_AGE: u64 = 150;
/// The public development admin: an Ed25519 key whose 32-byte secret seed is this text. It
/// holds no secret by design; it signs initialize_config and is the mint authority here.
pub const DEV_ADMIN_SEED: &[u8; 32] = b"dgpu-escrow-dev-admin-NOT-SECRET";

/// A JSON-RPC error object.
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), data: None }
    }
    pub fn params(message: impl Into<String>) -> Self {
        Self::new(-32602, format!("Invalid params: {}", message.into()))
    }
    fn internal(what: impl std::fmt::Display) -> Self {
        Self::new(-32603, format!("Internal error: {what}"))
    }
}

pub struct Options {
    pub clock_speed: u32,
    pub start_time: Option<i64>,
    pub setup: bool,
    pub fee_bps: u16,
    pub decimals: u8,
}

/// `unix_timestamp = base + speed * (wall time since start)`, in whole seconds.
struct VirtualClock {
    base: i64,
    start: Instant,
    speed: u32,
}

impl VirtualClock {
    fn now(&self) -> i64 {
        let scaled = self.start.elapsed().as_nanos() * u128::from(self.speed) / 1_000_000_000;
        self.base.saturating_add(i64::try_from(scaled).unwrap_or(i64::MAX))
    }
}

struct Record {
    slot: u64,
    block_time: i64,
    err: Option<TransactionError>,
    tx: VersionedTransaction,
    meta: Value,
}

pub struct Ledger {
    ctx: ProgramTestContext,
    clock: VirtualClock,
    clock_sysvar: Clock,
    slot: u64,
    records: HashMap<Signature, Record>,
    order: VecDeque<Signature>,
    /// Every address a landed transaction named (plus the genesis wallets): the accounts
    /// getProgramAccounts can scan. It grows with the ledger's state, as the bank does.
    known: BTreeSet<Pubkey>,
    decimals: HashMap<Pubkey, u8>,
    pub info: Value,
    pub admin: Keypair,
    pub treasury_owner: Keypair,
}

/// System program instructions, encoded by hand (bincode of `SystemInstruction`: a u32 variant
/// index, then the fields) so as not to depend on an optional feature of the system interface.
fn system_create_account(from: &Pubkey, to: &Pubkey, lamports: u64, space: u64, owner: &Pubkey) -> Instruction {
    let mut data = 0u32.to_le_bytes().to_vec();
    data.extend_from_slice(&lamports.to_le_bytes());
    data.extend_from_slice(&space.to_le_bytes());
    data.extend_from_slice(owner.as_ref());
    Instruction {
        program_id: anchor_lang::solana_program::system_program::ID,
        accounts: vec![AccountMeta::new(*from, true), AccountMeta::new(*to, true)],
        data,
    }
}

fn system_transfer(from: &Pubkey, to: &Pubkey, lamports: u64) -> Instruction {
    let mut data = 2u32.to_le_bytes().to_vec();
    data.extend_from_slice(&lamports.to_le_bytes());
    Instruction {
        program_id: anchor_lang::solana_program::system_program::ID,
        accounts: vec![AccountMeta::new(*from, true), AccountMeta::new(*to, false)],
        data,
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn b58(data: &[u8]) -> String {
    bs58::encode(data).into_string()
}

fn err_json(err: &TransactionError) -> Value {
    serde_json::to_value(err).unwrap_or_else(|_| json!(format!("{err:?}")))
}

/// `amount` of a mint with `decimals` as a decimal string ("1.5", "0.000001", "12").
fn ui_string(amount: u64, decimals: u8) -> String {
    let digits = format!("{amount:0>width$}", width = usize::from(decimals) + 1);
    let (whole, frac) = digits.split_at(digits.len() - usize::from(decimals));
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() { whole.to_string() } else { format!("{whole}.{frac}") }
}

fn ui_amount(amount: u64, decimals: u8) -> Value {
    // uiAmount is a float in the wire format; uiAmountString is exact.
    json!({"amount": amount.to_string(), "decimals": decimals,
           "uiAmount": amount as f64 / 10f64.powi(i32::from(decimals)),
           "uiAmountString": ui_string(amount, decimals)})
}

fn param<'a>(params: &'a Value, i: usize) -> Option<&'a Value> {
    params.as_array().and_then(|a| a.get(i))
}

fn config<'a>(params: &'a Value, i: usize) -> Option<&'a serde_json::Map<String, Value>> {
    param(params, i).and_then(Value::as_object)
}

fn pubkey_at(params: &Value, i: usize) -> Result<Pubkey, RpcError> {
    let text = param(params, i).and_then(Value::as_str).ok_or_else(|| RpcError::params("expected a base58 address"))?;
    Pubkey::from_str(text).map_err(|_| RpcError::params(format!("invalid address {text:?}")))
}

fn decode_tx(params: &Value) -> Result<VersionedTransaction, RpcError> {
    let text = param(params, 0).and_then(Value::as_str).ok_or_else(|| RpcError::params("expected an encoded transaction"))?;
    let encoding = config(params, 1).and_then(|c| c.get("encoding")).and_then(Value::as_str).unwrap_or("base58");
    let bytes = match encoding {
        "base64" => base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| RpcError::params(format!("base64: {e}")))?,
        "base58" => bs58::decode(text).into_vec().map_err(|e| RpcError::params(format!("base58: {e}")))?,
        other => return Err(RpcError::params(format!("unsupported encoding {other:?}"))),
    };
    if bytes.len() > 1232 {
        return Err(RpcError::params(format!("transaction too large: {} bytes (max: 1232)", bytes.len())));
    }
    let tx: VersionedTransaction =
        bincode::deserialize(&bytes).map_err(|e| RpcError::params(format!("failed to deserialize transaction: {e}")))?;
    tx.sanitize().map_err(|e| RpcError::params(format!("invalid transaction: {e}")))?;
    if tx.signatures.is_empty() {
        return Err(RpcError::params("invalid transaction: no signature"));
    }
    Ok(tx)
}

fn account_json(account: &Account, cfg: Option<&serde_json::Map<String, Value>>) -> Result<Value, RpcError> {
    let mut data: &[u8] = &account.data;
    // solana-py sends `"dataSlice": null` when it wants the whole data
    if let Some(slice) = cfg.and_then(|c| c.get("dataSlice")).filter(|v| v.is_object()) {
        let offset = slice.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
        let length = slice.get("length").and_then(Value::as_u64).unwrap_or(0) as usize;
        let start = offset.min(data.len());
        data = &data[start..(start.saturating_add(length)).min(data.len())];
    }
    let encoding = cfg.and_then(|c| c.get("encoding")).and_then(Value::as_str).unwrap_or("base58");
    let data = match encoding {
        // jsonParsed falls back to base64, as a real node does for data it cannot parse
        "base64" | "jsonParsed" => json!([b64(data), "base64"]),
        "base58" => json!([b58(data), "base58"]),
        "binary" => json!(b58(data)),
        other => return Err(RpcError::params(format!("unsupported encoding {other:?}"))),
    };
    Ok(json!({"data": data, "executable": account.executable, "lamports": account.lamports,
              "owner": account.owner.to_string(), "rentEpoch": account.rent_epoch,
              "space": account.data.len()}))
}

fn filters_match(account: &Account, filters: &[Value]) -> Result<bool, RpcError> {
    for f in filters {
        if let Some(size) = f.get("dataSize") {
            if size.as_u64() != Some(account.data.len() as u64) {
                return Ok(false);
            }
        } else if let Some(m) = f.get("memcmp") {
            let offset = m.get("offset").and_then(Value::as_u64).ok_or_else(|| RpcError::params("memcmp.offset"))? as usize;
            let text = m.get("bytes").and_then(Value::as_str).ok_or_else(|| RpcError::params("memcmp.bytes"))?;
            let bytes = match m.get("encoding").and_then(Value::as_str).unwrap_or("base58") {
                "base64" => base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| RpcError::params("memcmp base64"))?,
                _ => bs58::decode(text).into_vec().map_err(|_| RpcError::params("memcmp base58"))?,
            };
            if account.data.get(offset..offset + bytes.len()) != Some(&bytes[..]) {
                return Ok(false);
            }
        } else {
            return Err(RpcError::params(format!("unsupported filter {f}")));
        }
    }
    Ok(true)
}

fn tx_json(tx: &VersionedTransaction) -> Value {
    let m = &tx.message;
    let h = m.header();
    let instructions: Vec<Value> = m
        .instructions()
        .iter()
        .map(|ix| json!({"programIdIndex": ix.program_id_index, "accounts": ix.accounts,
                         "data": b58(&ix.data), "stackHeight": null}))
        .collect();
    let mut message = json!({
        "header": {"numRequiredSignatures": h.num_required_signatures,
                   "numReadonlySignedAccounts": h.num_readonly_signed_accounts,
                   "numReadonlyUnsignedAccounts": h.num_readonly_unsigned_accounts},
        "accountKeys": m.static_account_keys().iter().map(|k| k.to_string()).collect::<Vec<_>>(),
        "recentBlockhash": m.recent_blockhash().to_string(),
        "instructions": instructions,
    });
    if let VersionedMessage::V0(v0) = m {
        message["addressTableLookups"] = json!(v0.address_table_lookups.iter().map(|l| json!({
            "accountKey": l.account_key.to_string(), "writableIndexes": l.writable_indexes,
            "readonlyIndexes": l.readonly_indexes})).collect::<Vec<_>>());
    }
    json!({"signatures": tx.signatures.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "message": message})
}

impl Ledger {
    pub async fn start(opts: &Options) -> Result<Ledger, String> {
        let admin = Keypair::new_from_array(*DEV_ADMIN_SEED);
        let mut pt = program_test();
        pt.add_account(admin.pubkey(), Account { lamports: 1_000 * LAMPORTS_PER_SOL, ..Account::default() });
        let ctx = pt.start_with_context().await;
        let clock_sysvar: Clock = ctx.banks_client.get_sysvar().await.map_err(|e| e.to_string())?;
        let slot = ctx.banks_client.get_root_slot().await.map_err(|e| e.to_string())?;
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?;
        let base = opts.start_time.unwrap_or(wall.as_secs() as i64);
        let mut ledger = Ledger {
            ctx,
            clock: VirtualClock { base, start: Instant::now(), speed: opts.clock_speed },
            clock_sysvar,
            slot,
            records: HashMap::new(),
            order: VecDeque::new(),
            known: BTreeSet::from([admin.pubkey()]),
            decimals: HashMap::new(),
            info: Value::Null,
            admin,
            treasury_owner: Keypair::new(),
        };
        ledger.sync_clock();
        let mut info = json!({
            "program_id": dgpu_escrow::ID.to_string(),
            "admin": ledger.admin.pubkey().to_string(),
            "mint_authority": ledger.admin.pubkey().to_string(),
            "clock_speed": opts.clock_speed,
            "unix_timestamp_at_start": base,
            "mint": null, "decimals": null, "treasury": null, "treasury_owner": null, "fee_bps": null,
        });
        if opts.setup {
            let (mint, treasury) = ledger.setup(opts).await?;
            info["mint"] = json!(mint.to_string());
            info["decimals"] = json!(opts.decimals);
            info["treasury"] = json!(treasury.to_string());
            info["treasury_owner"] = json!(ledger.treasury_owner.pubkey().to_string());
            info["fee_bps"] = json!(opts.fee_bps);
        }
        ledger.info = info;
        Ok(ledger)
    }

    /// Creates the mint (admin as mint authority), the treasury's token account and the Config,
    /// with real transactions.
    async fn setup(&mut self, opts: &Options) -> Result<(Pubkey, Pubkey), String> {
        let mint = Keypair::new();
        let admin = self.admin.insecure_clone();
        let rent = self.ctx.banks_client.get_rent().await.map_err(|e| e.to_string())?;
        let create = system_create_account(
            &admin.pubkey(), &mint.pubkey(), rent.minimum_balance(MintState::LEN), MintState::LEN as u64, &TOKEN_PROGRAM);
        let init = spl_token_interface::instruction::initialize_mint2(
            &TOKEN_PROGRAM, &mint.pubkey(), &admin.pubkey(), None, opts.decimals).map_err(|e| e.to_string())?;
        self.send_signed(&[create, init], &[&admin, &mint]).await?;
        let owner = self.treasury_owner.pubkey();
        let treasury = anchor_spl::associated_token::get_associated_token_address(&owner, &mint.pubkey());
        let ata = spl_associated_token_account_interface::instruction::create_associated_token_account_idempotent(
            &admin.pubkey(), &owner, &mint.pubkey(), &TOKEN_PROGRAM);
        let config = Pubkey::find_program_address(&[dgpu_escrow::SEED_CONFIG], &dgpu_escrow::ID).0;
        let init_config = Instruction {
            program_id: dgpu_escrow::ID,
            accounts: dgpu_escrow::accounts::InitializeConfig {
                admin: admin.pubkey(), config, mint: mint.pubkey(), treasury,
                system_program: anchor_lang::solana_program::system_program::ID,
            }
            .to_account_metas(None),
            data: dgpu_escrow::instruction::InitializeConfig {
                args: dgpu_escrow::InitializeConfigArgs { fee_bps: opts.fee_bps },
            }
            .data(),
        };
        self.send_signed(&[ata, init_config], &[&admin]).await?;
        Ok((mint.pubkey(), treasury))
    }

    async fn send_signed(&mut self, ixs: &[Instruction], signers: &[&Keypair]) -> Result<Signature, String> {
        let blockhash = self.ctx.banks_client.get_latest_blockhash().await.map_err(|e| e.to_string())?;
        let tx = Transaction::new_signed_with_payer(ixs, Some(&signers[0].pubkey()), signers, blockhash);
        let tx = VersionedTransaction::from(tx);
        self.preflight(&tx).await.map_err(|e| e.message)?;
        let sig = self.execute(tx).await.map_err(|e| e.message)?;
        match &self.records[&sig].err {
            None => Ok(sig),
            Some(err) => Err(format!("transaction {sig} failed: {err}")),
        }
    }

    fn banks(&self) -> BanksClient {
        self.ctx.banks_client.clone()
    }

    fn sync_clock(&mut self) {
        let now = self.clock.now();
        if now != self.clock_sysvar.unix_timestamp {
            self.clock_sysvar.unix_timestamp = now;
            self.ctx.set_sysvar(&self.clock_sysvar);
        }
    }

    fn context(&self) -> Value {
        json!({"slot": self.slot, "apiVersion": "3.1.12"})
    }

    fn with_context(&self, value: Value) -> Value {
        json!({"context": self.context(), "value": value})
    }

    async fn account(&self, key: Pubkey) -> Result<Option<Account>, RpcError> {
        self.banks().get_account(key).await.map_err(RpcError::internal)
    }

    async fn mint_decimals(&mut self, mint: Pubkey) -> Option<u8> {
        if let Some(d) = self.decimals.get(&mint) {
            return Some(*d);
        }
        let account = self.account(mint).await.ok()??;
        let decimals = MintState::unpack(&account.data).ok()?.decimals;
        self.decimals.insert(mint, decimals);
        Some(decimals)
    }

    pub async fn handle(&mut self, method: &str, params: &Value) -> Result<Value, RpcError> {
        self.sync_clock();
        match method {
            "getHealth" => Ok(json!("ok")),
            "getVersion" => Ok(json!({"solana-core": "3.1.12", "feature-set": 0})),
            "getSlot" => Ok(json!(self.slot)),
            "getBlockHeight" => Ok(json!(self.block_height().await?)),
            "getGenesisHash" => Ok(json!(self.ctx.genesis_config().hash().to_string())),
            "getLatestBlockhash" => {
                let hash = self.banks().get_latest_blockhash().await.map_err(RpcError::internal)?;
                let height = self.block_height().await?;
                Ok(self.with_context(json!({"blockhash": hash.to_string(),
                                            "lastValidBlockHeight": height + BLOCKHASH_AGE})))
            }
            "getMinimumBalanceForRentExemption" => {
                let size = param(params, 0).and_then(Value::as_u64).ok_or_else(|| RpcError::params("expected a size"))?;
                let rent = self.banks().get_rent().await.map_err(RpcError::internal)?;
                Ok(json!(rent.minimum_balance(size as usize)))
            }
            "getBalance" => {
                let key = pubkey_at(params, 0)?;
                let lamports = self.account(key).await?.map_or(0, |a| a.lamports);
                Ok(self.with_context(json!(lamports)))
            }
            "getAccountInfo" => {
                let key = pubkey_at(params, 0)?;
                let value = match self.account(key).await? {
                    Some(a) => account_json(&a, config(params, 1))?,
                    None => Value::Null,
                };
                Ok(self.with_context(value))
            }
            "getMultipleAccounts" => {
                let keys = param(params, 0).and_then(Value::as_array).ok_or_else(|| RpcError::params("expected addresses"))?;
                if keys.len() > MAX_MULTIPLE_ACCOUNTS {
                    return Err(RpcError::params(format!("too many addresses (max {MAX_MULTIPLE_ACCOUNTS})")));
                }
                let mut out = vec![];
                for (i, _) in keys.iter().enumerate() {
                    let key = pubkey_at(&json!(keys), i)?;
                    out.push(match self.account(key).await? {
                        Some(a) => account_json(&a, config(params, 1))?,
                        None => Value::Null,
                    });
                }
                Ok(self.with_context(json!(out)))
            }
            "getTokenAccountBalance" => {
                let key = pubkey_at(params, 0)?;
                let account = self.account(key).await?.ok_or_else(|| RpcError::params("could not find account"))?;
                let state = (account.owner == TOKEN_PROGRAM)
                    .then(|| TokenState::unpack(&account.data).ok())
                    .flatten()
                    .ok_or_else(|| RpcError::params("not a Token account"))?;
                let decimals = self.mint_decimals(state.mint).await.ok_or_else(|| RpcError::params("mint not found"))?;
                Ok(self.with_context(ui_amount(state.amount, decimals)))
            }
            "getProgramAccounts" => self.program_accounts(params).await,
            "getSignatureStatuses" => {
                let sigs = param(params, 0).and_then(Value::as_array).ok_or_else(|| RpcError::params("expected signatures"))?;
                if sigs.len() > 256 {
                    return Err(RpcError::params("too many signatures (max 256)"));
                }
                let statuses: Vec<Value> = sigs
                    .iter()
                    .map(|s| {
                        let sig = s.as_str().and_then(|s| Signature::from_str(s).ok())?;
                        let r = self.records.get(&sig)?;
                        let status = match &r.err { None => json!({"Ok": null}), Some(e) => json!({"Err": err_json(e)}) };
                        Some(json!({"slot": r.slot, "confirmations": null, "err": r.err.as_ref().map(err_json),
                                    "status": status, "confirmationStatus": "finalized"}))
                    })
                    .map(|v| v.unwrap_or(Value::Null))
                    .collect();
                Ok(self.with_context(json!(statuses)))
            }
            "getTransaction" => {
                let text = param(params, 0).and_then(Value::as_str).ok_or_else(|| RpcError::params("expected a signature"))?;
                let sig = Signature::from_str(text).map_err(|_| RpcError::params("invalid signature"))?;
                let Some(r) = self.records.get(&sig) else { return Ok(Value::Null) };
                let encoding = config(params, 1).and_then(|c| c.get("encoding")).and_then(Value::as_str).unwrap_or("json");
                let transaction = match encoding {
                    "base64" => json!([b64(&bincode::serialize(&r.tx).map_err(RpcError::internal)?), "base64"]),
                    _ => tx_json(&r.tx),
                };
                let version = match r.tx.message { VersionedMessage::Legacy(_) => json!("legacy"), VersionedMessage::V0(_) => json!(0) };
                Ok(json!({"slot": r.slot, "blockTime": r.block_time, "meta": r.meta,
                          "transaction": transaction, "version": version}))
            }
            "getSignaturesForAddress" => self.signatures_for(params),
            "simulateTransaction" => self.simulate(params).await,
            "sendTransaction" => {
                let tx = decode_tx(params)?;
                verify(&tx)?;
                let skip = config(params, 1).and_then(|c| c.get("skipPreflight")).and_then(Value::as_bool).unwrap_or(false);
                if !skip {
                    self.preflight(&tx).await?;
                }
                Ok(json!(self.execute(tx).await?.to_string()))
            }
            "requestAirdrop" => {
                let to = pubkey_at(params, 0)?;
                let lamports = param(params, 1).and_then(Value::as_u64).ok_or_else(|| RpcError::params("expected lamports"))?;
                if lamports == 0 || lamports > MAX_AIRDROP {
                    return Err(RpcError::params(format!("an airdrop is 1..={MAX_AIRDROP} lamports")));
                }
                let payer = self.ctx.payer.insecure_clone();
                let ix = system_transfer(&payer.pubkey(), &to, lamports);
                let sig = self.send_signed(&[ix], &[&payer]).await.map_err(|e| RpcError::new(-32600, e))?;
                Ok(json!(sig.to_string()))
            }
            // ---- development only: not Solana methods ----
            "dgpu_advanceClock" => {
                let seconds = param(params, 0).and_then(Value::as_i64).filter(|s| *s >= 0)
                    .ok_or_else(|| RpcError::params("expected seconds >= 0"))?;
                self.clock.base = self.clock.base.saturating_add(seconds);
                self.sync_clock();
                Ok(json!({"unixTimestamp": self.clock_sysvar.unix_timestamp}))
            }
            "dgpu_info" => Ok(self.info.clone()),
            other => Err(RpcError::new(-32601, format!("Method not found: {other}"))),
        }
    }

    /// The landed transactions naming an address, newest first (`before` and `until` are
    /// exclusive bounds, `limit` at most 1000, as a validator answers).
    fn signatures_for(&self, params: &Value) -> Result<Value, RpcError> {
        let address = pubkey_at(params, 0)?;
        let cfg = config(params, 1);
        let bound = |name: &str| -> Result<Option<Signature>, RpcError> {
            match cfg.and_then(|c| c.get(name)).and_then(Value::as_str) {
                Some(text) => Signature::from_str(text).map(Some).map_err(|_| RpcError::params(format!("invalid {name}"))),
                None => Ok(None),
            }
        };
        let (before, until) = (bound("before")?, bound("until")?);
        let limit = cfg.and_then(|c| c.get("limit")).and_then(Value::as_u64).unwrap_or(1000);
        if !(1..=1000).contains(&limit) {
            return Err(RpcError::params("limit is 1..=1000"));
        }
        let mut skipping = before.is_some();
        let mut out = vec![];
        for sig in self.order.iter().rev() {
            if skipping {
                skipping = Some(*sig) != before;
                continue;
            }
            if Some(*sig) == until || out.len() as u64 >= limit {
                break;
            }
            let r = &self.records[sig];
            if r.tx.message.static_account_keys().contains(&address) {
                out.push(json!({"signature": sig.to_string(), "slot": r.slot, "err": r.err.as_ref().map(err_json),
                                "memo": null, "blockTime": r.block_time, "confirmationStatus": "finalized"}));
            }
        }
        Ok(json!(out))
    }

    async fn block_height(&self) -> Result<u64, RpcError> {
        self.banks().get_root_block_height().await.map_err(RpcError::internal)
    }

    async fn program_accounts(&self, params: &Value) -> Result<Value, RpcError> {
        let program = pubkey_at(params, 0)?;
        let cfg = config(params, 1);
        let filters: Vec<Value> = cfg.and_then(|c| c.get("filters")).and_then(Value::as_array).cloned().unwrap_or_default();
        let mut out = vec![];
        for key in &self.known {
            let Some(account) = self.account(*key).await? else { continue };
            if account.owner == program && filters_match(&account, &filters)? {
                out.push(json!({"pubkey": key.to_string(), "account": account_json(&account, cfg)?}));
            }
        }
        let with_context = cfg.and_then(|c| c.get("withContext")).and_then(Value::as_bool).unwrap_or(false);
        Ok(if with_context { self.with_context(json!(out)) } else { json!(out) })
    }

    async fn simulate(&mut self, params: &Value) -> Result<Value, RpcError> {
        let mut tx = decode_tx(params)?;
        let cfg = config(params, 1);
        let flag = |name: &str| cfg.and_then(|c| c.get(name)).and_then(Value::as_bool).unwrap_or(false);
        if flag("replaceRecentBlockhash") {
            let hash = self.banks().get_latest_blockhash().await.map_err(RpcError::internal)?;
            tx.message.set_recent_blockhash(hash);
        } else if flag("sigVerify") {
            verify(&tx)?;
        }
        let sim = self.banks().simulate_transaction(tx).await.map_err(RpcError::internal)?;
        let err = sim.result.and_then(Result::err);
        let (logs, units) = sim.simulation_details.map_or((vec![], 0), |d| (d.logs, d.units_consumed));
        Ok(self.with_context(json!({"err": err.as_ref().map(err_json), "logs": logs, "accounts": null,
                                    "unitsConsumed": units, "returnData": null})))
    }

    /// Simulates `tx`; a failure is answered as a validator's preflight failure (-32002).
    async fn preflight(&self, tx: &VersionedTransaction) -> Result<(), RpcError> {
        let sim = self.banks().simulate_transaction(tx.clone()).await.map_err(RpcError::internal)?;
        if let Some(Err(err)) = sim.result {
            let (logs, units) = sim.simulation_details.map_or((vec![], 0), |d| (d.logs, d.units_consumed));
            return Err(RpcError {
                code: -32002,
                message: format!("Transaction simulation failed: {err}"),
                data: Some(json!({"err": err_json(&err), "logs": logs, "accounts": null,
                                  "unitsConsumed": units, "returnData": null})),
            });
        }
        Ok(())
    }

    async fn snapshot(&self, keys: &[Pubkey]) -> Result<Vec<Option<Account>>, RpcError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.account(*key).await?);
        }
        Ok(out)
    }

    async fn token_balances(&mut self, accounts: &[Option<Account>]) -> Vec<Value> {
        let mut out = vec![];
        for (index, account) in accounts.iter().enumerate() {
            let Some(account) = account else { continue };
            if account.owner != TOKEN_PROGRAM || account.data.len() != TokenState::LEN {
                continue;
            }
            let Ok(state) = TokenState::unpack(&account.data) else { continue };
            let Some(decimals) = self.mint_decimals(state.mint).await else { continue };
            out.push(json!({"accountIndex": index, "mint": state.mint.to_string(), "owner": state.owner.to_string(),
                            "programId": TOKEN_PROGRAM.to_string(), "uiTokenAmount": ui_amount(state.amount, decimals)}));
        }
        out
    }

    /// Executes `tx` and records it; a transaction that did not land at all (bad blockhash,
    /// fee payer without funds, duplicate) is an error, one that landed and failed is recorded
    /// with its error (its fee was charged), as on a cluster.
    async fn execute(&mut self, tx: VersionedTransaction) -> Result<Signature, RpcError> {
        let sig = tx.signatures[0];
        let keys = tx.message.static_account_keys().to_vec();
        let pre = self.snapshot(&keys).await?;
        let fee = match &tx.message {
            VersionedMessage::Legacy(m) => self.banks().get_fee_for_message(m.clone()).await.ok().flatten(),
            VersionedMessage::V0(_) => None,
        }
        .unwrap_or(5_000 * u64::from(tx.message.header().num_required_signatures));
        let out = self.banks().process_transaction_with_metadata(tx.clone()).await.map_err(RpcError::internal)?;
        let Some(metadata) = out.metadata else {
            let err = out.result.err().unwrap_or(TransactionError::AccountNotFound);
            return Err(RpcError {
                code: -32002,
                message: format!("Transaction failed to land: {err}"),
                data: Some(json!({"err": err_json(&err), "logs": [], "accounts": null, "unitsConsumed": 0, "returnData": null})),
            });
        };
        let post = self.snapshot(&keys).await?;
        let lamports = |s: &[Option<Account>]| s.iter().map(|a| a.as_ref().map_or(0, |a| a.lamports)).collect::<Vec<_>>();
        let err = out.result.err();
        let status = match &err { None => json!({"Ok": null}), Some(e) => json!({"Err": err_json(e)}) };
        let meta = json!({
            "err": err.as_ref().map(err_json), "status": status, "fee": fee,
            "preBalances": lamports(&pre), "postBalances": lamports(&post),
            "innerInstructions": [], "logMessages": metadata.log_messages,
            "preTokenBalances": self.token_balances(&pre).await,
            "postTokenBalances": self.token_balances(&post).await,
            "rewards": [], "loadedAddresses": {"writable": [], "readonly": []},
            "computeUnitsConsumed": metadata.compute_units_consumed,
        });
        self.known.extend(keys);
        if self.order.len() >= MAX_RECORDS {
            if let Some(old) = self.order.pop_front() {
                self.records.remove(&old);
            }
        }
        let block_time = self.clock_sysvar.unix_timestamp;
        self.records.insert(sig, Record { slot: self.slot, block_time, err, tx, meta });
        self.order.push_back(sig);
        Ok(sig)
    }
}

/// Every signature must verify (-32003 otherwise, as a validator answers).
fn verify(tx: &VersionedTransaction) -> Result<(), RpcError> {
    if tx.verify_with_results().iter().all(|ok| *ok) {
        Ok(())
    } else {
        Err(RpcError::new(-32003, "Transaction signature verification failure"))
    }
}
