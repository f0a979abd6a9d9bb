use crate::constants::SEED_ESCROW;
use crate::errors::EscrowError;
use crate::events::SettleKind;
use crate::instructions::vault::{now, settle, vault_address, Exit};
use crate::state::Escrow;
use anchor_lang::prelude::*;
use anchor_spl::token::{Mint, Token, TokenAccount};

/// The renter takes everything back when the provider never started before the deadline;
/// the vault and the escrow account are closed (their rent to the renter).
#[derive(Accounts)]
pub struct RefundUnstarted<'info> {
    /// The escrow's renter; receives the vault's and the escrow's rent.
    #[account(mut)]
    pub renter: Signer<'info>,
    /// Closed at the end of the instruction: its rent goes to the renter.
    #[account(
        mut,
        close = renter,
        seeds = [SEED_ESCROW, escrow.renter.as_ref(), escrow.provider.as_ref(), &escrow.rental_id.to_le_bytes()],
        bump = escrow.bump,
    )]
    pub escrow: Account<'info, Escrow>,
    #[account(address = escrow.mint @ EscrowError::InvalidMint)]
    pub mint: Account<'info, Mint>,
    /// CHECK: pinned to the escrow's associated token account (the only vault it can have);
    /// it is unchecked only because it is gone once the escrow is closed. Its owner, mint and
    /// authority are checked in `vault_balance` before any transfer.
    #[account(mut, address = vault_address(&escrow.key(), &escrow.mint) @ EscrowError::InvalidVault)]
    pub vault: UncheckedAccount<'info>,
    #[account(mut, token::mint = mint, token::authority = escrow.renter)]
    pub renter_token: Account<'info, TokenAccount>,
    pub token_program: Program<'info, Token>,
}

impl RefundUnstarted<'_> {
    /// Unauthorized, EscrowClosed, AlreadyStarted, StartDeadlineNotReached.
    fn validate(&self) -> Result<()> {
        let escrow = &self.escrow;
        require_keys_eq!(self.renter.key(), escrow.renter, EscrowError::Unauthorized);
        require!(escrow.is_open(), EscrowError::EscrowClosed);
        require!(!escrow.is_started(), EscrowError::AlreadyStarted);
        require!(
            now()? >= escrow.start_deadline,
            EscrowError::StartDeadlineNotReached
        );
        Ok(())
    }

    #[access_control(ctx.accounts.validate())]
    pub fn refund_unstarted(ctx: Context<Self>) -> Result<()> {
        let accounts = ctx.accounts;
        let vault = accounts.vault.to_account_info();
        let renter = accounts.renter.to_account_info();
        let renter_token = accounts.renter_token.to_account_info();
        settle(
            Exit {
                escrow: &mut accounts.escrow,
                mint: &accounts.mint,
                vault: &vault,
                renter: &renter,
                renter_token: &renter_token,
                payees: None,
                token_program: &accounts.token_program,
            },
            0,
            SettleKind::RefundUnstarted,
        )
    }
}
