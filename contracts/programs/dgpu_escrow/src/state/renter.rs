use anchor_lang::prelude::*;

/// One per renter, PDA `[SEED_RENTER, renter]`, created by the renter's first `open`: the highest
/// rental id the renter has opened. `open` requires a higher one, so each (renter, rental id) is
/// opened at most once: an escrow's account can be closed at its exit (its rent back to the renter)
/// and the rental still never revives. It stays (one small account per renter, not per rental).
#[account]
#[derive(InitSpace, Debug)]
pub struct Renter {
    /// Layout version (`RENTER_LAYOUT_VERSION`).
    pub version: u8,
    /// Canonical bump of this PDA, stored at the first `open`.
    pub bump: u8,
    pub renter: Pubkey,
    /// Every later `open` must use a higher rental id (0 before the first).
    pub last_rental_id: u64,
    /// Escrows this renter has opened.
    pub opened: u64,
}
