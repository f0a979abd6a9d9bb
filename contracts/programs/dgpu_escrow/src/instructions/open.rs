use crate::constants::{ESCROW_LAYOUT_VERSION, RENTER_LAYOUT_VERSION, SEED_CONFIG, SEED_ESCROW, SEED_RENTER};
use crate::errors::EscrowError;
use crate::events::EscrowOpened;
use crate::instructions::vault::{now, vault_balance};
use crate::math;
use crate::state::{Config, Escrow, EscrowStatus, Renter};
use anchor_lang::prelude::*;
use anchor_spl::associated_token::AssociatedToken;
use anchor_spl::token::{self, Mint, Token, TokenAccount, TransferChecked};

#[derive(AnchorSerialize, AnchorDeserialize, Clone, Debug)]
pub struct OpenArgs {
    pub rental_id: u64,
    pub rate_per_minute: u64,
    pub max_minutes: u32,
    pub start_deadline: i64,
}

/// The renter opens a rental and deposits `rate_per_minute * max_minutes` into a new vault.
#[derive(Accounts)]
#[instruction(args: OpenArgs)]
pub struct Open<'info> {
    #[account(mut)]
    pub renter: Signer<'info>,
    /// CHECK: only the provider's address is used (a PDA seed, then stored and checked by
    /// `start`/`claim`); it does not sign here and need not exist yet.
    #[account(constraint = provider.key() != renter.key() @ EscrowError::SameParty)]
    pub provider: UncheckedAccount<'info>,
    #[account(seeds = [SEED_CONFIG], bump = config.bump)]
    pub config: Account<'info, Config>,
    #[account(address = config.mint @ EscrowError::InvalidMint)]
    pub mint: Account<'info, Mint>,
    #[account(
        init,
        payer = renter,
        space = 8 + Escrow::INIT_SPACE,
        seeds = [SEED_ESCROW, renter.key().as_ref(), provider.key().as_ref(), &args.rental_id.to_le_bytes()],
        bump,
    )]
    pub escrow: Account<'info, Escrow>,
    /// The renter's rental-id record (created by the first `open`, paid by the renter).
    #[account(
        init_if_needed,
        payer = renter,
        space = 8 + Renter::INIT_SPACE,
        seeds = [SEED_RENTER, renter.key().as_ref()],
        bump,
    )]
    pub renter_state: Account<'info, Renter>,
    /// The escrow's own ATA: one vault per rental. `init_if_needed` because anyone can create
    /// an ATA: a vault created ahead of `open` (with dust in it) must not block the rental.
    #[account(
        init_if_needed,
        payer = renter,
        associated_token::mint = mint,
        associated_token::authority = escrow,
        associated_token::token_program = token_program,
    )]
    pub vault: Account<'info, TokenAccount>,
    #[account(mut, token::mint = mint, token::authority = renter)]
    pub renter_token: Account<'info, TokenAccount>,
    pub token_program: Program<'info, Token>,
    pub associated_token_program: Program<'info, AssociatedToken>,
    pub system_program: Program<'info, System>,
}

impl Open<'_> {
    /// Order of docs/escrow-rules.md: InvalidAmount, Overflow, InvalidDeadline, Paused,
    /// RentalIdUsed. (The signer is the renter by construction.)
    fn validate(&self, args: &OpenArgs) -> Result<()> {
        require!(
            args.rate_per_minute > 0 && args.max_minutes > 0,
            EscrowError::InvalidAmount
        );
        math::cost(args.rate_per_minute, args.max_minutes)?;
        require!(args.start_deadline > now()?, EscrowError::InvalidDeadline);
        require!(!self.config.paused, EscrowError::Paused);
        require!(
            args.rental_id > self.renter_state.last_rental_id,
            EscrowError::RentalIdUsed
        );
        Ok(())
    }

    #[access_control(ctx.accounts.validate(&args))]
    pub fn open(ctx: Context<Self>, args: OpenArgs) -> Result<()> {
        let accounts = ctx.accounts;
        let deposited = math::cost(args.rate_per_minute, args.max_minutes)?;
        let state = &mut accounts.renter_state;
        state.version = RENTER_LAYOUT_VERSION;
        state.bump = ctx.bumps.renter_state;
        state.renter = accounts.renter.key();
        state.last_rental_id = args.rental_id;
        state.opened = state.opened.checked_add(1).ok_or_else(|| error!(EscrowError::Overflow))?;
        accounts.escrow.set_inner(Escrow {
            version: ESCROW_LAYOUT_VERSION,
            bump: ctx.bumps.escrow,
            status: EscrowStatus::Open,
            renter: accounts.renter.key(),
            provider: accounts.provider.key(),
            mint: accounts.mint.key(),
            rental_id: args.rental_id,
            rate_per_minute: args.rate_per_minute,
            max_minutes: args.max_minutes,
            deposited,
            fee_bps: accounts.config.fee_bps,
            start_deadline: args.start_deadline,
            started_at: None,
            claimed_minutes: 0,
            paid: 0,
            fee_paid: 0,
            refunded: 0,
        });

        let held_before = accounts.vault.amount;
        token::transfer_checked(
            CpiContext::new(
                accounts.token_program.key(),
                TransferChecked {
                    from: accounts.renter_token.to_account_info(),
                    mint: accounts.mint.to_account_info(),
                    to: accounts.vault.to_account_info(),
                    authority: accounts.renter.to_account_info(),
                },
            ),
            deposited,
            accounts.mint.decimals,
        )?;
        let held = vault_balance(
            &accounts.vault.to_account_info(),
            &accounts.escrow.key(),
            &accounts.mint.key(),
        )?;
        require!(
            u128::from(held) == u128::from(held_before) + u128::from(deposited),
            EscrowError::VaultBalanceMismatch
        );

        let escrow = &accounts.escrow;
        emit!(EscrowOpened {
            escrow: escrow.key(),
            renter: escrow.renter,
            provider: escrow.provider,
            mint: escrow.mint,
            rental_id: escrow.rental_id,
            rate_per_minute: escrow.rate_per_minute,
            max_minutes: escrow.max_minutes,
            deposited: escrow.deposited,
            fee_bps: escrow.fee_bps,
            start_deadline: escrow.start_deadline,
        });
        Ok(())
    }
}
