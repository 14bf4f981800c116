// SPDX-License-Identifier: GPL-2.0

//! ChaCha20-Poly1305 from the kernel's library (lib/crypto/chacha20poly1305.c), in place, with
//! the counter as nonce and no associated data; and wiping keys.

use core::ptr;

use kernel::ffi::c_void;

extern "C" {
    fn ntm_shim_memzero_explicit(p: *mut c_void, len: usize);
    fn chacha20poly1305_encrypt(
        dst: *mut u8,
        src: *const u8,
        src_len: usize,
        ad: *const u8,
        ad_len: usize,
        nonce: u64,
        key: *const u8,
    );
    fn chacha20poly1305_decrypt(
        dst: *mut u8,
        src: *const u8,
        src_len: usize,
        ad: *const u8,
        ad_len: usize,
        nonce: u64,
        key: *const u8,
    ) -> bool;
}

pub(crate) const KEY_LEN: usize = 32;
pub(crate) const TAG_LEN: usize = 16;

/// Seals `buf[..len]` in place and writes the tag to `buf[len..len + TAG_LEN]`.
pub(crate) fn seal(buf: &mut [u8], len: usize, counter: u64, key: &[u8; KEY_LEN]) {
    assert!(len.checked_add(TAG_LEN).is_some_and(|end| end <= buf.len()));
    let p = buf.as_mut_ptr();
    // SAFETY: `p` is valid for `len + TAG_LEN` bytes (checked above); the library encrypts in
    // place (dst == src is supported: the stream is XORed block by block, the MAC reads dst).
    unsafe { chacha20poly1305_encrypt(p, p, len, ptr::null(), 0, counter, key.as_ptr()) }
}

/// Opens `buf` (ciphertext then tag) in place; on success `buf[..len - TAG_LEN]` is the
/// plaintext. Nothing is decrypted unless the tag verifies.
pub(crate) fn open(buf: &mut [u8], counter: u64, key: &[u8; KEY_LEN]) -> bool {
    if buf.len() < TAG_LEN {
        return false;
    }
    let p = buf.as_mut_ptr();
    // SAFETY: `p` is valid for `buf.len()` bytes; the library verifies the tag over src before
    // decrypting into dst, and dst == src is supported.
    unsafe { chacha20poly1305_decrypt(p, p, buf.len(), ptr::null(), 0, counter, key.as_ptr()) }
}

/// Zeroes memory in a way the compiler cannot elide (keys).
pub(crate) fn memzero_explicit(buf: &mut [u8]) {
    // SAFETY: `buf` is a valid, exclusively borrowed region of `buf.len()` bytes.
    unsafe { ntm_shim_memzero_explicit(buf.as_mut_ptr().cast(), buf.len()) }
}
