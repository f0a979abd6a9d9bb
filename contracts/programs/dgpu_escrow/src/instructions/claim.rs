use crate::constants::{SEED_CONFIG, SEED_ESCROW};
use crate::errors::EscrowError;
use crate::events::EscrowClaimed;
use crate::instructions::vault::{now, pay_out, vault_address, vault_balance};
use crate::state::{Config, Escrow};
use anchor_lang::prelude::*;
use anchor_spl::token::{Mint, Token, TokenAccount};

/// The provider is paid the whole minutes accrued since the last claim; the fee goes to the
/// treasury.
#[derive(Accounts)]
pub struct Claim<'info> {
    pub provider: Signer<'info>,
    #[account(seeds = [SEED_CONFIG], bump = config.bump)]
    pub config: Account<'info, Config>,
    #[account(
        mut,
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
    /// Any token account of the mint owned by the escrow's provider.
    #[account(mut, token::mint = mint, token::authority = escrow.provider)]
    pub provider_token: Account<'info, TokenAccount>,
    #[account(
        mut,
        address = config.treasury @ EscrowError::InvalidTreasury,
        token::mint = mint,
        constraint = treasury.key() != vault.key() @ EscrowError::DuplicateAccount,
    )]
    pub treasury: Account<'info, TokenAccount>,
    pub token_program: Program<'info, Token>,
}

impl Claim<'_> {
    /// Unauthorized, EscrowClosed, NotStarted, NothingToClaim.
    fn validate(&self) -> Result<()> {
        let escrow = &self.escrow;
        require_keys_eq!(self.provider.key(), escrow.provider, EscrowError::Unauthorized);
        require!(escrow.is_open(), EscrowError::EscrowClosed);
        require!(escrow.is_started(), EscrowError::NotStarted);
        require!(
            escrow.accrued_minutes(now()?) > escrow.claimed_minutes,
            EscrowError::NothingToClaim
        );
        Ok(())
    }

    #[access_control(ctx.accounts.validate())]
    pub fn claim(ctx: Context<Self>) -> Result<()> {
        let accounts = ctx.accounts;
        let vault = accounts.vault.to_account_info();
        let escrow_key = accounts.escrow.key();
        let from_minutes = accounts.escrow.claimed_minutes;
        let to_minutes = accounts.escrow.accrued_minutes(now()?);
        let payout = accounts.escrow.pay_until(to_minutes)?;

        pay_out(
            &accounts.token_program,
            &accounts.escrow,
            &vault,
            &accounts.mint,
            &accounts.provider_token.to_account_info(),
            &accounts.treasury.to_account_info(),
            payout,
        )?;
        // Reload after the CPIs: the vault may hold dust on top, never less than the accounting.
        let held = vault_balance(&vault, &escrow_key, &accounts.mint.key())?;
        require!(
            held >= accounts.escrow.remaining()?,
            EscrowError::VaultBalanceMismatch
        );

        emit!(EscrowClaimed {
            escrow: escrow_key,
            from_minutes,
            to_minutes,
            provider_amount: payout.provider,
            fee_amount: payout.fee,
        });
        Ok(())
    }
}
