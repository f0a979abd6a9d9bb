//! Native tests of the dgpu_escrow program: its real entrypoint inside solana-program-test,
//! with the real SPL Token and Associated Token Account programs. One test binary (one link).

// solana-program-test 3.x marks its API "Agave Unstable"; it is still the in-process native harness.
#![allow(deprecated)]

mod attacks;
mod entry;
mod harness;
mod idl;
mod vectors;
