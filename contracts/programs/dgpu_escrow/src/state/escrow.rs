use crate::constants::SEED_ESCROW;
use crate::errors::EscrowError;
use crate::math::{self, Payout};
use anchor_lang::prelude::*;

/// Lifecycle of an escrow. `Closed` is terminal: a closed escrow accepts nothing.
#[derive(AnchorSerialize, AnchorDeserialize, Clone, Copy, Debug, PartialEq, Eq, InitSpace)]
pub enum EscrowStatus {
    Open,
    Closed,
}

/// One rental, PDA `[SEED_ESCROW, renter, provider, rental_id.to_le_bytes()]`.
/// Its vault is the escrow's own associated token account for `mint`.
///
/// The exit that sets status `Closed` also closes this account and its vault (their rent goes
/// to the renter): a later instruction finds no escrow (Anchor's AccountNotInitialized, the
/// rules' `EscrowClosed`), and the same `(renter, provider, rental_id)` can never be opened
/// again because `open` requires a rental id above the renter's last (`Renter`).
///
/// Invariants (docs/escrow-rules.md): `deposited == rate_per_minute * max_minutes`;
/// `claimed_minutes <= max_minutes`; while open the vault holds at least
/// `deposited - paid - fee_paid - refunded`; once closed `paid + fee_paid + refunded == deposited`.
#[account]
#[derive(InitSpace, Debug)]
pub struct Escrow {
    /// Layout version (`ESCROW_LAYOUT_VERSION`).
    pub version: u8,
    /// Canonical bump of this PDA, stored at `open`.
    pub bump: u8,
    pub status: EscrowStatus,
    pub renter: Pubkey,
    pub provider: Pubkey,
    pub mint: Pubkey,
    pub rental_id: u64,
    pub rate_per_minute: u64,
    pub max_minutes: u32,
    pub deposited: u64,
    /// Fee of this escrow, copied from the config at `open`.
    pub fee_bps: u16,
    /// The provider must `start` strictly before this time.
    pub start_deadline: i64,
    pub started_at: Option<i64>,
    /// Minutes already paid out.
    pub claimed_minutes: u32,
    /// Total sent to the provider.
    pub paid: u64,
    /// Total sent to the treasury.
    pub fee_paid: u64,
    /// Total sent back to the renter.
    pub refunded: u64,
}

impl Escrow {
    pub fn is_open(&self) -> bool {
        self.status == EscrowStatus::Open
    }

    pub fn is_started(&self) -> bool {
        self.started_at.is_some()
    }

    pub fn accrued_minutes(&self, now: i64) -> u32 {
        math::accrued_minutes(self.started_at, now, self.max_minutes)
    }

    pub fn is_expired(&self, now: i64) -> bool {
        math::is_expired(self.started_at, now, self.max_minutes)
    }

    /// What the vault must still hold: `deposited - paid - fee_paid - refunded`.
    pub fn remaining(&self) -> Result<u64> {
        self.deposited
            .checked_sub(self.paid)
            .and_then(|v| v.checked_sub(self.fee_paid))
            .and_then(|v| v.checked_sub(self.refunded))
            .ok_or_else(|| error!(EscrowError::Overflow))
    }

    /// Records the payout of minutes `claimed_minutes -> to` and returns it; a `to` at or
    /// below `claimed_minutes` (a clock gone backwards) pays nothing and changes nothing.
    pub fn pay_until(&mut self, to: u32) -> Result<Payout> {
        let to = to.min(self.max_minutes);
        let payout = math::payout(self.claimed_minutes, to, self.rate_per_minute, self.fee_bps)?;
        if to > self.claimed_minutes {
            self.claimed_minutes = to;
        }
        self.paid = self
            .paid
            .checked_add(payout.provider)
            .ok_or_else(|| error!(EscrowError::Overflow))?;
        self.fee_paid = self
            .fee_paid
            .checked_add(payout.fee)
            .ok_or_else(|| error!(EscrowError::Overflow))?;
        Ok(payout)
    }

    /// Adds `extra` minutes; returns the amount the renter must deposit.
    pub fn add_minutes(&mut self, extra: u32) -> Result<u64> {
        let amount = math::cost(self.rate_per_minute, extra)?;
        let max_minutes = self
            .max_minutes
            .checked_add(extra)
            .ok_or_else(|| error!(EscrowError::Overflow))?;
        let deposited = self
            .deposited
            .checked_add(amount)
            .ok_or_else(|| error!(EscrowError::Overflow))?;
        // deposited == rate * max_minutes, always
        require_eq!(
            math::cost(self.rate_per_minute, max_minutes)?,
            deposited,
            EscrowError::Overflow
        );
        self.max_minutes = max_minutes;
        self.deposited = deposited;
        Ok(amount)
    }

    /// Refunds everything not yet paid out and closes the escrow; returns the refund.
    pub fn close_with_refund(&mut self) -> Result<u64> {
        let refund = self.remaining()?;
        self.refunded = self
            .refunded
            .checked_add(refund)
            .ok_or_else(|| error!(EscrowError::Overflow))?;
        self.status = EscrowStatus::Closed;
        Ok(refund)
    }

    /// Runs `f` with this escrow's PDA signer seeds.
    pub fn with_signer_seeds<R>(&self, f: impl FnOnce(&[&[&[u8]]]) -> R) -> R {
        let rental_id = self.rental_id.to_le_bytes();
        let bump = [self.bump];
        let seeds: &[&[u8]] = &[
            SEED_ESCROW,
            self.renter.as_ref(),
            self.provider.as_ref(),
            &rental_id,
            &bump,
        ];
        f(&[seeds])
    }
}
