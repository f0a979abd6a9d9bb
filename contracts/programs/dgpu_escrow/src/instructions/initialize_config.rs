use crate::constants::{ADMIN, CONFIG_LAYOUT_VERSION, MAX_FEE_BPS, SEED_CONFIG};
use crate::errors::EscrowError;
use crate::events::ConfigInitialized;
use crate::state::Config;
use anchor_lang::prelude::*;
use anchor_spl::token::{Mint, TokenAccount};

#[derive(AnchorSerialize, AnchorDeserialize, Clone, Debug)]
pub struct InitializeConfigArgs {
    pub fee_bps: u16,
}

/// Creates the single `Config`. Only `ADMIN`, fixed when the program is built, may sign it; it
/// becomes the config's first admin (`update_config` can hand it over).
#[derive(Accounts)]
pub struct InitializeConfig<'info> {
    #[account(mut, address = ADMIN @ EscrowError::Unauthorized)]
    pub admin: Signer<'info>,
    #[account(
        init,
        payer = admin,
        space = 8 + Config::INIT_SPACE,
        seeds = [SEED_CONFIG],
        bump,
    )]
    pub config: Account<'info, Config>,
    /// The dGPU mint, pinned here for good (classic SPL Token: `Account<Mint>` checks the owner).
    pub mint: Account<'info, Mint>,
    #[account(token::mint = mint)]
    pub treasury: Account<'info, TokenAccount>,
    pub system_program: Program<'info, System>,
}

impl InitializeConfig<'_> {
    fn validate(&self, args: &InitializeConfigArgs) -> Result<()> {
        require!(args.fee_bps <= MAX_FEE_BPS, EscrowError::FeeTooHigh);
        Ok(())
    }

    #[access_control(ctx.accounts.validate(&args))]
    pub fn initialize_config(ctx: Context<Self>, args: InitializeConfigArgs) -> Result<()> {
        let accounts = ctx.accounts;
        accounts.config.set_inner(Config {
            version: CONFIG_LAYOUT_VERSION,
            bump: ctx.bumps.config,
            admin: accounts.admin.key(),
            mint: accounts.mint.key(),
            treasury: accounts.treasury.key(),
            fee_bps: args.fee_bps,
            paused: false,
        });
        emit!(ConfigInitialized {
            admin: accounts.config.admin,
            mint: accounts.config.mint,
            treasury: accounts.config.treasury,
            fee_bps: accounts.config.fee_bps,
            paused: accounts.config.paused,
        });
        Ok(())
    }
}
