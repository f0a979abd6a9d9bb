//! dGPU escrow: a renter pays a GPU provider per minute in the dGPU SPL token.
//!
//! The rules (state, derived values, instructions, error names, check order) are those of
//! `docs/escrow-rules.md`, which the Python ledger (`dgpu.protocol.escrow`) implements too;
//! the tests run the shared vectors (`tests/vectors/escrow.json`) through this program.
//!
//! Layout: `constants` (seeds, limits), `state` (accounts), `math` (pure arithmetic),
//! `instructions/*` (one file per instruction), `errors`, `events`.
#![deny(arithmetic_overflow)]
// Anchor's macros expand to cfgs this crate does not declare.
#![allow(unexpected_cfgs)]

use anchor_lang::prelude::*;

pub mod constants;
pub mod errors;
pub mod events;
pub mod instructions;
pub mod math;
pub mod state;

pub use constants::*;
pub use errors::EscrowError;
pub use events::*;
pub use instructions::*;
pub use state::*;

declare_id!("FwS7dLgPfT2jNmtFXVhesDHXLJhpa1gPLYfxZe5Guu4P");

#[program]
pub mod dgpu_escrow {
    use super::*;

    /// `ADMIN` only: creates the config: admin, pinned mint, treasury token account, fee (<= MAX_FEE_BPS).
    pub fn initialize_config(
        ctx: Context<InitializeConfig>,
        args: InitializeConfigArgs,
    ) -> Result<()> {
        InitializeConfig::initialize_config(ctx, args)
    }

    /// Admin only: change the admin, the fee (new escrows only) or the pause.
    pub fn update_config(ctx: Context<UpdateConfig>, args: UpdateConfigArgs) -> Result<()> {
        UpdateConfig::update_config(ctx, args)
    }

    /// Admin and the new treasury's owner: move the fee to another token account of the mint.
    pub fn set_treasury(ctx: Context<SetTreasury>) -> Result<()> {
        SetTreasury::set_treasury(ctx)
    }

    /// Renter: open a rental and deposit `rate_per_minute * max_minutes`.
    pub fn open(ctx: Context<Open>, args: OpenArgs) -> Result<()> {
        Open::open(ctx, args)
    }

    /// Provider: start the rental before `start_deadline`.
    pub fn start(ctx: Context<Start>) -> Result<()> {
        Start::start(ctx)
    }

    /// Provider: be paid the whole minutes accrued since the last claim.
    pub fn claim(ctx: Context<Claim>) -> Result<()> {
        Claim::claim(ctx)
    }

    /// Renter: add minutes (before expiry).
    pub fn top_up(ctx: Context<TopUp>, args: TopUpArgs) -> Result<()> {
        TopUp::top_up(ctx, args)
    }

    /// Renter or provider: pay what accrued, refund the rest, close.
    pub fn close(ctx: Context<Close>) -> Result<()> {
        Close::close(ctx)
    }

    /// Anyone, after expiry: pay all minutes, refund any rest, close.
    pub fn settle_expired(ctx: Context<SettleExpired>) -> Result<()> {
        SettleExpired::settle_expired(ctx)
    }

    /// Renter, when the provider never started before the deadline: refund all, close.
    pub fn refund_unstarted(ctx: Context<RefundUnstarted>) -> Result<()> {
        RefundUnstarted::refund_unstarted(ctx)
    }
}
