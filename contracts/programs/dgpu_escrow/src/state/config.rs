use anchor_lang::prelude::*;

/// The program's single configuration, PDA `[SEED_CONFIG]`.
#[account]
#[derive(InitSpace, Debug)]
pub struct Config {
    /// Layout version (`CONFIG_LAYOUT_VERSION`).
    pub version: u8,
    /// Canonical bump of this PDA, stored at `initialize_config`.
    pub bump: u8,
    /// May call `update_config` (meant to be a multisig).
    pub admin: Pubkey,
    /// The pinned dGPU mint (classic SPL Token); fixed forever at `initialize_config`.
    pub mint: Pubkey,
    /// Token account (of `mint`) that receives the protocol fee.
    pub treasury: Pubkey,
    /// Fee in basis points for escrows opened from now on; `<= MAX_FEE_BPS`.
    pub fee_bps: u16,
    /// Blocks `open` only; every exit keeps working.
    pub paused: bool,
}
