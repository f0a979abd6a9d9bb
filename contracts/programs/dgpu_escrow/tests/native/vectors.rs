//! The shared vectors (`tests/vectors/escrow.json`, written by the Python reference ledger
//! `dgpu.protocol.escrow`) run through the program: every scenario, every step, balances and
//! escrow state compared after each step.
//!
//! Two drivers:
//! - `escrow_json_vectors`: instructions built here with the program's own Anchor client types;
//! - `python_encoded_instruction_vectors`: the exact instructions the Python client sends
//!   (`tests/vectors/escrow_instructions.json`, bytes and account metas written by
//!   `contracts/scripts/gen_escrow_instructions.py`), which checks that client's encoding.

use crate::harness::*;
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::{AccountMeta, Instruction};
use dgpu_escrow::{Escrow, EscrowStatus, OpenArgs, MAX_FEE_BPS};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use solana_keypair::Keypair;
use solana_signer::Signer;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

fn vectors_dir() -> PathBuf {
    // contracts/programs/dgpu_escrow -> <repo>/tests/vectors. Read at run time, not baked in by
    // `env!`: a build cache shared by clones at other paths (CI) can outlive the checkout it was
    // compiled in.
    let program = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    PathBuf::from(program).join("../../../tests/vectors")
}

#[derive(Deserialize)]
struct VectorFile {
    version: u32,
    decimals: u8,
    max_fee_bps: u16,
    scenarios: Vec<Scenario>,
}

#[derive(Deserialize)]
struct Scenario {
    name: String,
    fee_bps: u16,
    initial: BTreeMap<String, u64>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    at: i64,
    by: String,
    action: String,
    #[serde(default)]
    args: Option<Map<String, Value>>,
    expect: Expect,
}

#[derive(Deserialize)]
struct Expect {
    error: Option<String>,
    balances: BTreeMap<String, u64>,
    escrow: Option<Map<String, Value>>,
}

fn load_vectors() -> VectorFile {
    let path = vectors_dir().join("escrow.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file: VectorFile = serde_json::from_str(&text).expect("escrow.json");
    assert_eq!(file.version, 1, "vector format version");
    assert_eq!(file.max_fee_bps, MAX_FEE_BPS, "MAX_FEE_BPS differs from the Python ledger's");
    assert!(!file.scenarios.is_empty());
    file
}

fn u64_arg(args: &Map<String, Value>, key: &str) -> u64 {
    args.get(key).and_then(Value::as_u64).unwrap_or_else(|| panic!("arg {key} in {args:?}"))
}

fn open_args(args: &Map<String, Value>) -> OpenArgs {
    OpenArgs {
        rental_id: u64_arg(args, "rental_id"),
        rate_per_minute: u64_arg(args, "rate_per_minute"),
        max_minutes: u32::try_from(u64_arg(args, "max_minutes")).expect("max_minutes u32"),
        start_deadline: args.get("start_deadline").and_then(Value::as_i64).expect("start_deadline"),
    }
}

fn extra_minutes(args: &Option<Map<String, Value>>) -> Option<u32> {
    args.as_ref().map(|a| u32::try_from(u64_arg(a, "extra_minutes")).expect("extra_minutes u32"))
}

/// The escrow as the vectors spell it (every field the rules doc names).
fn escrow_json(e: &Escrow) -> Map<String, Value> {
    let v = json!({
        "status": match e.status { EscrowStatus::Open => "open", EscrowStatus::Closed => "closed" },
        "rental_id": e.rental_id,
        "rate_per_minute": e.rate_per_minute,
        "max_minutes": e.max_minutes,
        "deposited": e.deposited,
        "fee_bps": e.fee_bps,
        "start_deadline": e.start_deadline,
        "started_at": e.started_at,
        "claimed_minutes": e.claimed_minutes,
        "paid": e.paid,
        "fee_paid": e.fee_paid,
        "refunded": e.refunded,
    });
    v.as_object().cloned().unwrap()
}

/// Compares the ledger after a step with the vector's expectation; returns the differences.
async fn check_state(env: &mut Env, escrow: Pubkey, vault: Pubkey, expect: &Expect) -> Vec<String> {
    let mut diffs = vec![];
    let [renter, provider, treasury, vault_balance] = {
        let (r, p, t) = (env.renter_token(), env.provider_token(), env.treasury);
        [env.balance(r).await, env.balance(p).await, env.balance(t).await, env.balance(vault).await]
    };
    let actual: BTreeMap<&str, u64> =
        [("renter", renter), ("provider", provider), ("treasury", treasury), ("vault", vault_balance)].into();
    for (key, want) in &expect.balances {
        match actual.get(key.as_str()) {
            Some(got) if got == want => {}
            Some(got) => diffs.push(format!("balance {key}: got {got}, want {want}")),
            None => diffs.push(format!("unknown balance {key}")),
        }
    }
    let state = env.escrow_state_at(escrow).await;
    match (&expect.escrow, &state) {
        (None, None) => {}
        (None, Some(_)) => diffs.push("escrow exists, vector has none".into()),
        // On chain the exit closes the escrow's account (its rent back to the renter).
        (Some(want), None) if want.get("status") == Some(&json!("closed")) => {
            if env.exists(escrow).await {
                diffs.push("a closed escrow's account still exists".into());
            }
            if vault_balance != 0 {
                diffs.push(format!("closed but vault {vault_balance}"));
            }
        }
        (Some(_), None) => diffs.push("escrow missing".into()),
        (Some(want), Some(_)) if want.get("status") == Some(&json!("closed")) => {
            diffs.push("a closed escrow's account was not closed".into())
        }
        (Some(want), Some(got)) => {
            let got_json = escrow_json(got);
            for (key, value) in want {
                match got_json.get(key) {
                    Some(v) if v == value => {}
                    Some(v) => diffs.push(format!("escrow.{key}: got {v}, want {value}")),
                    None => diffs.push(format!("unknown escrow field {key}")),
                }
            }
            // The rules' invariants, on the real ledger.
            let outstanding = got.deposited - got.paid - got.fee_paid - got.refunded;
            match got.status {
                EscrowStatus::Open if vault_balance < outstanding => {
                    diffs.push(format!("vault {vault_balance} < outstanding {outstanding}"))
                }
                EscrowStatus::Closed if outstanding != 0 || vault_balance != 0 => {
                    diffs.push(format!("closed but outstanding {outstanding}, vault {vault_balance}"))
                }
                _ => {}
            }
            if u128::from(got.deposited) != u128::from(got.rate_per_minute) * u128::from(got.max_minutes) {
                diffs.push("deposited != rate * max_minutes".into());
            }
        }
    }
    diffs
}

/// The rules' name for what the ledger answered: an instruction on an escrow whose account the
/// exit closed fails with Anchor's AccountNotInitialized, which is the rules' `EscrowClosed`.
async fn rules_error(env: &mut Env, escrow: Pubkey, got: Option<String>) -> Option<String> {
    let gone = anchor(anchor_lang::error::ErrorCode::AccountNotInitialized);
    if got.as_deref() == Some(gone.as_str()) && !env.exists(escrow).await {
        return Some("EscrowClosed".into());
    }
    got
}

fn setup_for(s: &Scenario, decimals: u8, provider_ata: bool, init_config: bool) -> Setup {
    for key in s.initial.keys() {
        assert!(["renter", "provider", "treasury", "vault"].contains(&key.as_str()), "initial.{key}");
    }
    let vault = s.initial.get("vault").copied().unwrap_or(0);
    if vault > 0 {
        // tokens sent ahead to the vault address of the scenario's rental (7, as Setup assumes)
        let first = s.steps.iter().find(|st| st.action == "open").and_then(|st| st.args.as_ref());
        assert_eq!(first.map(|a| u64_arg(a, "rental_id")), Some(7), "{}: a funded vault is rental 7's", s.name);
    }
    Setup {
        fee_bps: s.fee_bps,
        decimals,
        renter: s.initial["renter"],
        provider: s.initial.get("provider").copied().unwrap_or(0),
        treasury: s.initial.get("treasury").copied().unwrap_or(0),
        provider_ata,
        init_config,
        vault,
    }
}

#[tokio::test]
async fn escrow_json_vectors() {
    let file = load_vectors();
    let (mut failures, mut steps) = (vec![], 0usize);
    for s in &file.scenarios {
        let mut env = Env::new(setup_for(s, file.decimals, true, true)).await;
        let fake = Expect { error: None, balances: s.initial.clone(), escrow: None };
        let (escrow, vault) = (env.escrow(), env.vault());
        for d in check_state(&mut env, escrow, vault, &fake).await {
            failures.push(format!("{} initial: {d}", s.name));
        }
        for (i, step) in s.steps.iter().enumerate() {
            steps += 1;
            env.set_time(step.at).await;
            let open = match step.action.as_str() {
                "open" => {
                    let args = open_args(step.args.as_ref().expect("open args"));
                    env.rental_id = args.rental_id;
                    Some(args)
                }
                _ => None,
            };
            let by = env.p.by(&step.by).insecure_clone();
            let extra = if step.action == "top_up" { extra_minutes(&step.args) } else { None };
            let ix = env.action(&step.action, &by.pubkey(), open, extra);
            // The actor pays and signs, as the Python client does.
            let got = env.send_as(&[ix], &by, &[]).await.err();
            let escrow = env.escrow();
            let got = rules_error(&mut env, escrow, got).await;
            let mut diffs = vec![];
            if got != step.expect.error {
                diffs.push(format!("error: got {got:?}, want {:?}", step.expect.error));
            }
            let (escrow, vault) = (env.escrow(), env.vault());
            diffs.extend(check_state(&mut env, escrow, vault, &step.expect).await);
            for d in diffs {
                failures.push(format!("{} step {i} ({} {} at {}): {d}", s.name, step.by, step.action, step.at));
            }
        }
    }
    println!("escrow.json: {} scenarios, {steps} steps, {} differences", file.scenarios.len(), failures.len());
    assert!(failures.is_empty(), "vector differences:\n{}", failures.join("\n"));
}

// ---- the Python client's instructions ----

#[derive(Deserialize)]
struct IxFile {
    version: u32,
    program_id: String,
    keys: BTreeMap<String, KeyEntry>,
    mint: MintEntry,
    accounts: BTreeMap<String, String>,
    scenarios: Vec<IxScenario>,
}

#[derive(Deserialize)]
struct KeyEntry {
    seed_hex: String,
    pubkey: String,
}

#[derive(Deserialize)]
struct MintEntry {
    address: String,
    decimals: u8,
    mint_authority: String,
}

#[derive(Deserialize)]
struct IxScenario {
    name: String,
    fee_bps: u16,
    escrow: String,
    vault: String,
    setup: Vec<IxEntry>,
    steps: Vec<IxStep>,
}

#[derive(Deserialize)]
struct IxStep {
    index: usize,
    at: i64,
    by: String,
    signer: String,
    action: String,
    instructions: Vec<IxEntry>,
    expect_error: Option<String>,
}

#[derive(Deserialize)]
struct IxEntry {
    program_id: String,
    data_hex: String,
    accounts: Vec<MetaEntry>,
}

#[derive(Deserialize)]
struct MetaEntry {
    pubkey: String,
    is_signer: bool,
    is_writable: bool,
}

fn pk(s: &str) -> Pubkey {
    Pubkey::from_str(s).unwrap_or_else(|e| panic!("pubkey {s}: {e:?}"))
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn instruction(e: &IxEntry) -> Instruction {
    Instruction {
        program_id: pk(&e.program_id),
        accounts: e
            .accounts
            .iter()
            .map(|m| AccountMeta { pubkey: pk(&m.pubkey), is_signer: m.is_signer, is_writable: m.is_writable })
            .collect(),
        data: unhex(&e.data_hex),
    }
}

fn keypair(keys: &BTreeMap<String, KeyEntry>, role: &str) -> Keypair {
    let entry = keys.get(role).unwrap_or_else(|| panic!("key {role}"));
    let seed: [u8; 32] = unhex(&entry.seed_hex).try_into().expect("32-byte seed");
    let kp = Keypair::new_from_array(seed);
    assert_eq!(kp.pubkey().to_string(), entry.pubkey, "{role}: seed and pubkey disagree");
    kp
}

#[tokio::test]
async fn python_encoded_instruction_vectors() {
    let vectors = load_vectors();
    let path = vectors_dir().join("escrow_instructions.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file: IxFile = serde_json::from_str(&text).expect("escrow_instructions.json");
    assert_eq!(file.version, 1);
    assert_eq!(pk(&file.program_id), dgpu_escrow::ID, "program id");
    assert_eq!(file.scenarios.len(), vectors.scenarios.len(), "scenario count differs from escrow.json");

    let (mut failures, mut steps) = (vec![], 0usize);
    for (s, v) in file.scenarios.iter().zip(&vectors.scenarios) {
        assert_eq!(s.name, v.name);
        assert_eq!(s.fee_bps, v.fee_bps);
        let parties = Parties {
            admin: keypair(&file.keys, "admin"),
            renter: keypair(&file.keys, "renter"),
            provider: keypair(&file.keys, "provider"),
            stranger: keypair(&file.keys, "stranger"),
            treasury_owner: keypair(&file.keys, "treasury_owner"),
            mint: keypair(&file.keys, "mint"),
        };
        assert_eq!(parties.mint.pubkey(), pk(&file.mint.address));
        assert_eq!(parties.admin.pubkey(), pk(&file.mint.mint_authority));
        assert_eq!(file.mint.decimals, vectors.decimals);
        let mut env = Env::start(setup_for(v, file.mint.decimals, false, false), parties, |_, _| {}).await;
        assert_eq!(env.config, pk(&file.accounts["config"]));
        assert_eq!(env.treasury, pk(&file.accounts["treasury"]));
        assert_eq!(env.renter_token(), pk(&file.accounts["renter_token"]));
        assert_eq!(env.provider_token(), pk(&file.accounts["provider_token"]));

        let admin = env.p.admin.insecure_clone();
        let setup: Vec<Instruction> = s.setup.iter().map(instruction).collect();
        if let Err(e) = env.send_as(&setup, &admin, &[]).await {
            failures.push(format!("{}: setup failed: {e}", s.name));
            continue;
        }
        let (escrow, vault) = (pk(&s.escrow), pk(&s.vault));
        for step in &s.steps {
            steps += 1;
            let want = &v.steps[step.index];
            assert_eq!((step.at, &step.by, &step.action), (want.at, &want.by, &want.action), "{} step order", s.name);
            assert_eq!(step.expect_error, want.expect.error, "{}: the two vector files disagree", s.name);
            env.set_time(step.at).await;
            let signer = env.p.by(&step.by).insecure_clone();
            assert_eq!(signer.pubkey(), pk(&step.signer));
            let ixs: Vec<Instruction> = step.instructions.iter().map(instruction).collect();
            let got = env.send_as(&ixs, &signer, &[]).await.err();
            let got = rules_error(&mut env, escrow, got).await;
            let mut diffs = vec![];
            if got != step.expect_error {
                diffs.push(format!("error: got {got:?}, want {:?}", step.expect_error));
            }
            diffs.extend(check_state(&mut env, escrow, vault, &want.expect).await);
            for d in diffs {
                failures.push(format!("{} step {} ({} {}): {d}", s.name, step.index, step.by, step.action));
            }
        }
    }
    println!("escrow_instructions.json: {} scenarios, {steps} steps, {} differences", file.scenarios.len(), failures.len());
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}
