use crate::constants::SEED_ESCROW;
use crate::errors::EscrowError;
use crate::events::EscrowStarted;
use crate::instructions::vault::now;
use crate::math;
use crate::state::Escrow;
use anchor_lang::prelude::*;

/// The provider starts the rental: minutes accrue from now.
#[derive(Accounts)]
pub struct Start<'info> {
    pub provider: Signer<'info>,
    #[account(
        mut,
        seeds = [SEED_ESCROW, escrow.renter.as_ref(), escrow.provider.as_ref(), &escrow.rental_id.to_le_bytes()],
        bump = escrow.bump,
    )]
    pub escrow: Account<'info, Escrow>,
}

impl Start<'_> {
    /// Unauthorized, EscrowClosed, AlreadyStarted, StartDeadlinePassed.
    fn validate(&self) -> Result<()> {
        let escrow = &self.escrow;
        require_keys_eq!(self.provider.key(), escrow.provider, EscrowError::Unauthorized);
        require!(escrow.is_open(), EscrowError::EscrowClosed);
        require!(!escrow.is_started(), EscrowError::AlreadyStarted);
        require!(now()? < escrow.start_deadline, EscrowError::StartDeadlinePassed);
        Ok(())
    }

    #[access_control(ctx.accounts.validate())]
    pub fn start(ctx: Context<Self>) -> Result<()> {
        let started_at = now()?;
        let escrow = &mut ctx.accounts.escrow;
        escrow.started_at = Some(started_at);
        let expires_at = math::expires_at(started_at, escrow.max_minutes);
        emit!(EscrowStarted {
            escrow: escrow.key(),
            started_at,
            expires_at: i64::try_from(expires_at).unwrap_or(i64::MAX),
        });
        Ok(())
    }
}
