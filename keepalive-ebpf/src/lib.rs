#![no_std]
// This file exists to enable the library target, which aya-build's dependency tracking needs.
