//! The preload guard (not written yet).
