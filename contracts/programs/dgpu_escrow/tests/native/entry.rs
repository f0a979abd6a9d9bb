//! The program's real entrypoint as a native builtin of solana-program-test, shared by the
//! native tests and the local development endpoint (`examples/dgpu-local-rpc`).

use anchor_lang::prelude::{AccountInfo, Pubkey};
use anchor_lang::solana_program::entrypoint::ProgramResult;
use solana_program_test::{processor, ProgramTest};

/// Anchor's `entry` ties the program id, the account slice and every `AccountInfo` to one
/// lifetime, which `processor!`'s function pointer type cannot express (anchor issue #2738).
/// The references live for the whole call, so lengthening them for its duration is sound here.
fn process(program_id: &Pubkey, accounts: &[AccountInfo], data: &[u8]) -> ProgramResult {
    // SAFETY: every reference outlives this call, and `entry` does not keep any of them.
    let (program_id, accounts, data): (&Pubkey, &[AccountInfo], &[u8]) =
        unsafe { std::mem::transmute((program_id, accounts, data)) };
    dgpu_escrow::entry(program_id, accounts, data)
}

/// A program-test with the escrow program as a native builtin (SPL Token and ATA are loaded
/// by program-test itself).
pub fn program_test() -> ProgramTest {
    // program-test logs every instruction at debug level unless RUST_LOG says otherwise.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        if std::env::var_os("RUST_LOG").is_none() {
            std::env::set_var("RUST_LOG", "error");
        }
    });
    let mut pt = ProgramTest::new("dgpu_escrow", dgpu_escrow::ID, processor!(process));
    pt.prefer_bpf(false);
    pt
}
