use crate::constants::SEED_ESCROW;
use crate::errors::EscrowError;
use crate::events::EscrowToppedUp;
use crate::instructions::vault::{now, vault_address, vault_balance};
use crate::state::Escrow;
use anchor_lang::prelude::*;
use anchor_spl::token::{self, Mint, Token, TokenAccount, TransferChecked};

#[derive(AnchorSerialize, AnchorDeserialize, Clone, Debug)]
pub struct TopUpArgs {
    pub extra_minutes: u32,
}

/// The renter buys more minutes, before expiry only (after it, the gap would accrue
/// retroactively).
#[derive(Accounts)]
pub struct TopUp<'info> {
    pub renter: Signer<'info>,
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
    /// authority are checked in `vault_balance` before the transfer.
    #[account(mut, address = vault_address(&escrow.key(), &escrow.mint) @ EscrowError::InvalidVault)]
    pub vault: UncheckedAccount<'info>,
    #[account(mut, token::mint = mint, token::authority = escrow.renter)]
    pub renter_token: Account<'info, TokenAccount>,
    pub token_program: Program<'info, Token>,
}

impl TopUp<'_> {
    /// Unauthorized, EscrowClosed, InvalidAmount, Expired, Overflow.
    fn validate(&self, args: &TopUpArgs) -> Result<()> {
        let escrow = &self.escrow;
        require_keys_eq!(self.renter.key(), escrow.renter, EscrowError::Unauthorized);
        require!(escrow.is_open(), EscrowError::EscrowClosed);
        require!(args.extra_minutes > 0, EscrowError::InvalidAmount);
        require!(!escrow.is_expired(now()?), EscrowError::Expired);
        // Overflow of rate * extra, max_minutes + extra or deposited + rate * extra.
        let mut after: Escrow = (**escrow).clone();
        after.add_minutes(args.extra_minutes)?;
        Ok(())
    }

    #[access_control(ctx.accounts.validate(&args))]
    pub fn top_up(ctx: Context<Self>, args: TopUpArgs) -> Result<()> {
        let accounts = ctx.accounts;
        let vault = accounts.vault.to_account_info();
        let escrow_key = accounts.escrow.key();
        let amount = accounts.escrow.add_minutes(args.extra_minutes)?;
        let held_before = vault_balance(&vault, &escrow_key, &accounts.mint.key())?;
        token::transfer_checked(
            CpiContext::new(
                accounts.token_program.key(),
                TransferChecked {
                    from: accounts.renter_token.to_account_info(),
                    mint: accounts.mint.to_account_info(),
                    to: vault.clone(),
                    authority: accounts.renter.to_account_info(),
                },
            ),
            amount,
            accounts.mint.decimals,
        )?;
        let held = vault_balance(&vault, &escrow_key, &accounts.mint.key())?;
        require!(
            u128::from(held) == u128::from(held_before) + u128::from(amount),
            EscrowError::VaultBalanceMismatch
        );

        let escrow = &accounts.escrow;
        emit!(EscrowToppedUp {
            escrow: escrow_key,
            extra_minutes: args.extra_minutes,
            amount,
            max_minutes: escrow.max_minutes,
            deposited: escrow.deposited,
        });
        Ok(())
    }
}
