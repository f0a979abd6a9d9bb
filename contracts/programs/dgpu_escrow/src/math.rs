//! The escrow's arithmetic, as pure functions (the Python ledger implements the same rules,
//! `docs/escrow-rules.md` "Derived values"). No floats; every product goes through u128 and
//! every narrowing is checked, so a result either is exact or is `EscrowError::Overflow`.

use crate::constants::{BPS_DENOMINATOR, SECONDS_PER_MINUTE};
use crate::errors::EscrowError;
use anchor_lang::prelude::*;

/// Whole minutes accrued at `now`: 0 before `start`, else
/// `min(max(now - started_at, 0) / 60, max_minutes)`. A clock that goes backwards accrues
/// nothing (the difference is clamped at 0); it never goes past `max_minutes`.
pub fn accrued_minutes(started_at: Option<i64>, now: i64, max_minutes: u32) -> u32 {
    let Some(started_at) = started_at else {
        return 0;
    };
    // i128: the difference of two i64 cannot overflow.
    let elapsed = (i128::from(now) - i128::from(started_at)).max(0);
    let minutes = elapsed / i128::from(SECONDS_PER_MINUTE);
    // `minutes.min(max_minutes)` fits u32 by construction.
    u32::try_from(minutes.min(i128::from(max_minutes))).unwrap_or(max_minutes)
}

/// `started_at + 60 * max_minutes`, exact (i128: no overflow for any i64/u32 input).
pub fn expires_at(started_at: i64, max_minutes: u32) -> i128 {
    i128::from(started_at) + i128::from(SECONDS_PER_MINUTE) * i128::from(max_minutes)
}

/// Started and `now >= expires_at`.
pub fn is_expired(started_at: Option<i64>, now: i64, max_minutes: u32) -> bool {
    match started_at {
        Some(started_at) => i128::from(now) >= expires_at(started_at, max_minutes),
        None => false,
    }
}

/// `rate * minutes`, checked.
pub fn cost(rate_per_minute: u64, minutes: u32) -> Result<u64> {
    rate_per_minute
        .checked_mul(u64::from(minutes))
        .ok_or_else(|| error!(EscrowError::Overflow))
}

/// `floor(minutes * rate * fee_bps / 10000)`, on the cumulative total of minutes.
pub fn fee_for(minutes: u32, rate_per_minute: u64, fee_bps: u16) -> Result<u64> {
    // < 2^32 * 2^64 * 2^16 = 2^112: no u128 overflow is possible, checked all the same.
    let gross = u128::from(minutes)
        .checked_mul(u128::from(rate_per_minute))
        .and_then(|v| v.checked_mul(u128::from(fee_bps)))
        .ok_or_else(|| error!(EscrowError::Overflow))?;
    u64::try_from(gross / BPS_DENOMINATOR).map_err(|_| error!(EscrowError::Overflow))
}

/// What paying out minutes `from -> to` sends where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Payout {
    pub provider: u64,
    pub fee: u64,
}

impl Payout {
    pub fn total(&self) -> Result<u64> {
        self.provider
            .checked_add(self.fee)
            .ok_or_else(|| error!(EscrowError::Overflow))
    }
}

/// Pays minutes `from -> to` (`to >= from`): the treasury gets `fee_for(to) - fee_for(from)`
/// and the provider the rest of `(to - from) * rate`, so splitting claims never changes the
/// total fee. `from >= to` pays nothing.
pub fn payout(from: u32, to: u32, rate_per_minute: u64, fee_bps: u16) -> Result<Payout> {
    if to <= from {
        return Ok(Payout::default());
    }
    let minutes = to.checked_sub(from).ok_or_else(|| error!(EscrowError::Overflow))?;
    let gross = cost(rate_per_minute, minutes)?;
    let fee = fee_for(to, rate_per_minute, fee_bps)?
        .checked_sub(fee_for(from, rate_per_minute, fee_bps)?)
        .ok_or_else(|| error!(EscrowError::Overflow))?;
    let provider = gross
        .checked_sub(fee)
        .ok_or_else(|| error!(EscrowError::Overflow))?;
    Ok(Payout { provider, fee })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::MAX_FEE_BPS;
    use proptest::prelude::*;

    #[test]
    fn accrual_examples() {
        assert_eq!(accrued_minutes(None, 1_000, 10), 0);
        assert_eq!(accrued_minutes(Some(1_000), 1_000, 10), 0);
        assert_eq!(accrued_minutes(Some(1_000), 1_059, 10), 0);
        assert_eq!(accrued_minutes(Some(1_000), 1_060, 10), 1);
        assert_eq!(accrued_minutes(Some(1_000), 1_000 + 60 * 10, 10), 10);
        assert_eq!(accrued_minutes(Some(1_000), i64::MAX, 10), 10);
        // the clock went backwards
        assert_eq!(accrued_minutes(Some(1_000), 999, 10), 0);
        assert_eq!(accrued_minutes(Some(i64::MAX), i64::MIN, u32::MAX), 0);
        assert_eq!(accrued_minutes(Some(i64::MIN), i64::MAX, u32::MAX), u32::MAX);
    }

    #[test]
    fn expiry_examples() {
        assert!(!is_expired(None, i64::MAX, 1));
        assert!(!is_expired(Some(0), 59, 1));
        assert!(is_expired(Some(0), 60, 1));
        assert!(!is_expired(Some(i64::MAX), i64::MAX, 1));
        assert_eq!(expires_at(i64::MAX, u32::MAX), i128::from(i64::MAX) + 60 * i128::from(u32::MAX));
    }

    #[test]
    fn fee_examples() {
        // 60 minutes of 23834 at 5% = 71502 exactly
        assert_eq!(fee_for(60, 23_834, 500).unwrap(), 71_502);
        // rounds down
        assert_eq!(fee_for(1, 3, 500).unwrap(), 0);
        assert_eq!(fee_for(7, 3, 500).unwrap(), 1);
        assert_eq!(fee_for(u32::MAX, u64::MAX, MAX_FEE_BPS).unwrap_err(), error!(EscrowError::Overflow));
        let p = payout(0, 7, 3, 500).unwrap();
        assert_eq!(p, Payout { provider: 20, fee: 1 });
        assert_eq!(payout(5, 5, 3, 500).unwrap(), Payout::default());
        assert_eq!(payout(6, 5, 3, 500).unwrap(), Payout::default());
        assert!(cost(u64::MAX, 2).is_err());
    }

    proptest! {
        #[test]
        fn accrual_is_bounded_and_monotone(
            start in any::<i64>(), now in any::<i64>(), dt in 0i64..1_000_000, max in 1u32..=u32::MAX,
        ) {
            let a = accrued_minutes(Some(start), now, max);
            prop_assert!(a <= max);
            let later = now.saturating_add(dt);
            prop_assert!(accrued_minutes(Some(start), later, max) >= a);
            if now < start { prop_assert_eq!(a, 0); }
            // expired exactly when all minutes have accrued
            prop_assert_eq!(is_expired(Some(start), now, max), i128::from(now) >= expires_at(start, max));
            if is_expired(Some(start), now, max) { prop_assert_eq!(a, max); }
        }

        #[test]
        fn split_claims_conserve_value_and_fee(
            rate in 1u64..=1_000_000_000_000, max in 1u32..=100_000, fee_bps in 0u16..=MAX_FEE_BPS,
            cuts in proptest::collection::vec(0u32..=100_000, 0..8),
        ) {
            prop_assume!(cost(rate, max).is_ok());
            let mut points: Vec<u32> = cuts.into_iter().map(|c| c % (max + 1)).collect();
            points.push(max);
            points.sort_unstable();
            let (mut from, mut paid, mut fees) = (0u32, 0u64, 0u64);
            for to in points {
                let p = payout(from, to, rate, fee_bps).unwrap();
                paid += p.provider;
                fees += p.fee;
                from = from.max(to);
            }
            let whole = payout(0, max, rate, fee_bps).unwrap();
            prop_assert_eq!(fees, whole.fee);
            prop_assert_eq!(paid, whole.provider);
            prop_assert_eq!(paid + fees, cost(rate, max).unwrap());
            prop_assert_eq!(fees, fee_for(max, rate, fee_bps).unwrap());
            prop_assert!(u128::from(fees) * 10_000 <= u128::from(paid + fees) * u128::from(fee_bps));
        }

        #[test]
        fn fee_matches_u128_reference(minutes in any::<u32>(), rate in any::<u64>(), fee_bps in 0u16..=MAX_FEE_BPS) {
            let exact = u128::from(minutes) * u128::from(rate) * u128::from(fee_bps) / 10_000;
            match fee_for(minutes, rate, fee_bps) {
                Ok(f) => prop_assert_eq!(u128::from(f), exact),
                Err(_) => prop_assert!(exact > u128::from(u64::MAX)),
            }
        }
    }
}
