use crate::constants::{MAX_FEE_BPS, SEED_CONFIG};
use crate::errors::EscrowError;
use crate::events::ConfigUpdated;
use crate::state::Config;
use anchor_lang::prelude::*;
use anchor_spl::token::TokenAccount;

/// Each `None` keeps the current value. The treasury is always the `treasury` account passed
/// (pass the current one to keep it). The mint never changes.
#[derive(AnchorSerialize, AnchorDeserialize, Clone, Debug)]
pub struct UpdateConfigArgs {
    pub new_admin: Option<Pubkey>,
    pub fee_bps: Option<u16>,
    pub paused: Option<bool>,
}

#[derive(Accounts)]
pub struct UpdateConfig<'info> {
    pub admin: Signer<'info>,
    #[account(
        mut,
        seeds = [SEED_CONFIG],
        bump = config.bump,
        has_one = admin @ EscrowError::Unauthorized,
    )]
    pub config: Account<'info, Config>,
    #[account(token::mint = config.mint)]
    pub treasury: Account<'info, TokenAccount>,
}

impl UpdateConfig<'_> {
    fn validate(&self, args: &UpdateConfigArgs) -> Result<()> {
        if let Some(fee_bps) = args.fee_bps {
            require!(fee_bps <= MAX_FEE_BPS, EscrowError::FeeTooHigh);
        }
        Ok(())
    }

    /// Fee changes apply to escrows opened afterwards only (each escrow keeps its own).
    #[access_control(ctx.accounts.validate(&args))]
    pub fn update_config(ctx: Context<Self>, args: UpdateConfigArgs) -> Result<()> {
        let accounts = ctx.accounts;
        let treasury = accounts.treasury.key();
        let config = &mut accounts.config;
        if let Some(admin) = args.new_admin {
            config.admin = admin;
        }
        if let Some(fee_bps) = args.fee_bps {
            config.fee_bps = fee_bps;
        }
        if let Some(paused) = args.paused {
            config.paused = paused;
        }
        config.treasury = treasury;
        emit!(ConfigUpdated {
            admin: config.admin,
            treasury: config.treasury,
            fee_bps: config.fee_bps,
            paused: config.paused,
        });
        Ok(())
    }
}
