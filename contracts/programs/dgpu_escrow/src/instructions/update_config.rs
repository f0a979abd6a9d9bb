use crate::constants::{MAX_FEE_BPS, SEED_CONFIG};
use crate::errors::EscrowError;
use crate::events::ConfigUpdated;
use crate::state::Config;
use anchor_lang::prelude::*;
use anchor_spl::token::TokenAccount;

/// Each `None` keeps the current value. The mint never changes, and neither does the treasury
/// here: only `set_treasury`, co-signed by the new treasury's owner, moves it.
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
        let config = &mut ctx.accounts.config;
        if let Some(admin) = args.new_admin {
            config.admin = admin;
        }
        if let Some(fee_bps) = args.fee_bps {
            config.fee_bps = fee_bps;
        }
        if let Some(paused) = args.paused {
            config.paused = paused;
        }
        emit_updated(config);
        Ok(())
    }
}

fn emit_updated(config: &Config) {
    emit!(ConfigUpdated {
        admin: config.admin,
        treasury: config.treasury,
        fee_bps: config.fee_bps,
        paused: config.paused,
    });
}

/// The admin points the fee at another token account of the mint; that account's owner
/// co-signs, so the treasury can never silently become an account nobody controls (a typo, a
/// PDA such as an escrow's vault) or somebody else's without their consent.
#[derive(Accounts)]
pub struct SetTreasury<'info> {
    /// The admin and the config, checked as for `update_config`.
    pub admin_config: UpdateConfig<'info>,
    #[account(token::mint = admin_config.config.mint, token::authority = treasury_owner)]
    pub treasury: Account<'info, TokenAccount>,
    pub treasury_owner: Signer<'info>,
}

impl SetTreasury<'_> {
    pub fn set_treasury(ctx: Context<Self>) -> Result<()> {
        let treasury = ctx.accounts.treasury.key();
        let config = &mut ctx.accounts.admin_config.config;
        config.treasury = treasury;
        emit_updated(config);
        Ok(())
    }
}
