use crate::constants::{SEED_CONFIG, SEED_ESCROW};
use crate::errors::EscrowError;
use crate::events::SettleKind;
use crate::instructions::vault::{now, settle, vault_address, Exit};
use crate::state::{Config, Escrow};
use anchor_lang::prelude::*;
use anchor_spl::token::{Mint, Token, TokenAccount};

/// Anyone settles an expired rental, so that funds never get stuck: all `max_minutes` are
/// paid, any remainder goes back to the renter, and the vault and the escrow account are closed
/// (their rent to the renter). No signer other than the fee payer is needed.
#[derive(Accounts)]
pub struct SettleExpired<'info> {
    #[account(seeds = [SEED_CONFIG], bump = config.bump)]
    pub config: Account<'info, Config>,
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
    /// CHECK: the escrow's renter (address pinned); receives the vault's and the escrow's rent.
    #[account(mut, address = escrow.renter)]
    pub renter: UncheckedAccount<'info>,
    #[account(mut, token::mint = mint, token::authority = escrow.renter)]
    pub renter_token: Account<'info, TokenAccount>,
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

impl SettleExpired<'_> {
    /// EscrowClosed, NotExpired (anyone may call it).
    fn validate(&self) -> Result<()> {
        let escrow = &self.escrow;
        require!(escrow.is_open(), EscrowError::EscrowClosed);
        require!(escrow.is_expired(now()?), EscrowError::NotExpired);
        Ok(())
    }

    #[access_control(ctx.accounts.validate())]
    pub fn settle_expired(ctx: Context<Self>) -> Result<()> {
        let accounts = ctx.accounts;
        let to_minutes = accounts.escrow.max_minutes;
        let vault = accounts.vault.to_account_info();
        let renter = accounts.renter.to_account_info();
        let renter_token = accounts.renter_token.to_account_info();
        let provider_token = accounts.provider_token.to_account_info();
        let treasury = accounts.treasury.to_account_info();
        settle(
            Exit {
                escrow: &mut accounts.escrow,
                mint: &accounts.mint,
                vault: &vault,
                renter: &renter,
                renter_token: &renter_token,
                payees: Some((&provider_token, &treasury)),
                token_program: &accounts.token_program,
            },
            to_minutes,
            SettleKind::SettleExpired,
        )
    }
}
