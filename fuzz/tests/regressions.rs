//! Bugs the fuzzers found, one named test each (the input also lives in fuzz/artifacts/).

use omnikv_common::keys::decode_key;

/// Found by the `key` target: `u8::from_str_radix` accepts a leading `+`, so `decode_key`
/// takes `%+1` for the byte 0x01 instead of refusing a malformed escape, as its contract
/// says (and RFC 3986 requires). Two spellings then name one key (`%01` and `%+1`), and the
/// API answers 200 where it documents 400 for malformed percent-encoding.
#[test]
fn decode_key_refuses_a_plus_sign_in_an_escape() {
    assert_eq!(decode_key("%+1"), None);
    assert_eq!(decode_key("a%+F"), None);
    assert_eq!(decode_key("%+1%42"), None);
}
