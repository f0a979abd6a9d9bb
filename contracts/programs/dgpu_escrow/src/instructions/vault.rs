//! Token movements out of an escrow's vault, shared by `claim` and the three exits.

use crate::errors::EscrowError;
use crate::events::{EscrowSettled, SettleKind};
use crate::math::Payout;
use crate::state::Escrow;
use anchor_lang::prelude::*;
use anchor_spl::associated_token::get_associated_token_address;
use anchor_spl::token::{self, CloseAccount, Mint, Token, TokenAccount, TransferChecked};

/// The one vault of an escrow: its associated token account for `mint`.
pub fn vault_address(escrow: &Pubkey, mint: &Pubkey) -> Pubkey {
    get_associated_token_address(escrow, mint)
}

/// Balance of the vault, which must be an initialized SPL Token account of `mint` owned by
/// `escrow`. The vault is taken unchecked by the instructions (its address is pinned) because
/// it no longer exists once the escrow is closed, and the closed-escrow error must win then;
/// this is where it is checked, after the status check.
pub fn vault_balance(vault: &AccountInfo, escrow: &Pubkey, mint: &Pubkey) -> Result<u64> {
    require_keys_eq!(*vault.owner, token::ID, EscrowError::InvalidVault);
    let data = vault.try_borrow_data()?;
    let account = TokenAccount::try_deserialize(&mut &data[..])?;
    require_keys_eq!(account.mint, *mint, EscrowError::InvalidVault);
    require_keys_eq!(account.owner, *escrow, EscrowError::InvalidVault);
    Ok(account.amount)
}

/// `transfer_checked` of `amount` from the vault to `to`, signed by the escrow PDA.
/// Nothing is sent for 0.
pub fn pay_from_vault<'info>(
    token_program: &Program<'info, Token>,
    escrow: &Account<'info, Escrow>,
    vault: &AccountInfo<'info>,
    mint: &Account<'info, Mint>,
    to: &AccountInfo<'info>,
    amount: u64,
) -> Result<()> {
    if amount == 0 {
        return Ok(());
    }
    let accounts = TransferChecked {
        from: vault.clone(),
        mint: mint.to_account_info(),
        to: to.clone(),
        authority: escrow.to_account_info(),
    };
    escrow.with_signer_seeds(|signer| {
        token::transfer_checked(
            CpiContext::new_with_signer(token_program.key(), accounts, signer),
            amount,
            mint.decimals,
        )
    })
}

/// Pays the provider and the treasury their shares of `payout`.
#[allow(clippy::too_many_arguments)]
pub fn pay_out<'info>(
    token_program: &Program<'info, Token>,
    escrow: &Account<'info, Escrow>,
    vault: &AccountInfo<'info>,
    mint: &Account<'info, Mint>,
    provider_token: &AccountInfo<'info>,
    treasury: &AccountInfo<'info>,
    payout: Payout,
) -> Result<()> {
    pay_from_vault(token_program, escrow, vault, mint, provider_token, payout.provider)?;
    pay_from_vault(token_program, escrow, vault, mint, treasury, payout.fee)
}

/// The accounts an exit (`close`, `settle_expired`, `refund_unstarted`) moves funds between.
pub struct Exit<'a, 'info> {
    pub escrow: &'a mut Account<'info, Escrow>,
    pub mint: &'a Account<'info, Mint>,
    pub vault: &'a AccountInfo<'info>,
    /// Receives the vault's rent.
    pub renter: &'a AccountInfo<'info>,
    pub renter_token: &'a AccountInfo<'info>,
    /// `(provider_token, treasury)`; `None` when nothing can be owed (never started).
    pub payees: Option<(&'a AccountInfo<'info>, &'a AccountInfo<'info>)>,
    pub token_program: &'a Program<'info, Token>,
}

/// Pays minutes `claimed_minutes -> to_minutes` (if any), refunds the whole rest of the vault
/// to the renter, closes the vault (its rent goes to the renter) and marks the escrow Closed.
pub fn settle(exit: Exit<'_, '_>, to_minutes: u32, kind: SettleKind) -> Result<()> {
    let Exit {
        escrow,
        mint,
        vault,
        renter,
        renter_token,
        payees,
        token_program,
    } = exit;
    let escrow_key = escrow.key();

    let payout = escrow.pay_until(to_minutes)?;
    let refund_due = escrow.remaining()?;
    // The vault may hold more than the accounting (anyone can send it dust), never less.
    let held = vault_balance(vault, &escrow_key, &mint.key())?;
    require!(
        u128::from(held) >= u128::from(payout.total()?) + u128::from(refund_due),
        EscrowError::VaultBalanceMismatch
    );
    if payout != Payout::default() {
        let (provider_token, treasury) = payees.ok_or_else(|| error!(EscrowError::NotStarted))?;
        pay_out(token_program, escrow, vault, mint, provider_token, treasury, payout)?;
    }

    let refund = escrow.close_with_refund()?;
    // Reload after the CPIs; everything left (the refund plus any dust) goes to the renter so
    // that the vault can be closed.
    let left = vault_balance(vault, &escrow_key, &mint.key())?;
    require!(left >= refund, EscrowError::VaultBalanceMismatch);
    pay_from_vault(token_program, escrow, vault, mint, renter_token, left)?;
    let accounts = CloseAccount {
        account: vault.clone(),
        destination: renter.clone(),
        authority: escrow.to_account_info(),
    };
    escrow.with_signer_seeds(|signer| {
        token::close_account(CpiContext::new_with_signer(
            token_program.key(),
            accounts,
            signer,
        ))
    })?;

    emit!(EscrowSettled {
        escrow: escrow_key,
        kind,
        provider_amount: payout.provider,
        fee_amount: payout.fee,
        refund,
        claimed_minutes: escrow.claimed_minutes,
        paid: escrow.paid,
        fee_paid: escrow.fee_paid,
        refunded: escrow.refunded,
    });
    Ok(())
}

/// Unix time from the Clock sysvar (the only source of time).
pub fn now() -> Result<i64> {
    Ok(Clock::get()?.unix_timestamp)
}
