//! Property tests standing in for a fuzzer: real qemu-img images, mutated, and random bytes.
