//! Tests of `s3`.

use super::*;

#[test]
fn url_encoded_listings_decode_and_raw_ones_are_kept() {
    let mut a = "dir/a+b%2Bc%01".to_string();
    let mut b = "dir/".to_string();
    decode_page(&mut [&mut a, &mut b], true);
    assert_eq!(a, "dir/a b+c\u{1}");
    assert_eq!(b, "dir/");
    // Claims url but sent a raw space: not encoded after all.
    let mut c = "x y%41".to_string();
    let mut d = "e%41".to_string();
    decode_page(&mut [&mut c, &mut d], true);
    assert_eq!((c.as_str(), d.as_str()), ("x y%41", "e%41"));
    let mut e = "p%41".to_string();
    decode_page(&mut [&mut e], false);
    assert_eq!(e, "p%41");
}

#[test]
fn backoff_is_capped_and_jittered() {
    for n in 1..20 {
        assert!(backoff(n, false) <= Duration::from_secs(5));
        assert!(backoff(n, true) <= Duration::from_secs(5));
    }
    assert!(backoff(1, true) >= Duration::from_millis(500));
}

#[test]
fn content_range() {
    let cr = |start, end, total| Some(ContentRange { start, end, total });
    assert_eq!(
        parse_content_range("bytes 0-99/1234"),
        cr(0, 99, Some(1234))
    );
    assert_eq!(parse_content_range("bytes 100-199/*"), cr(100, 199, None));
    assert_eq!(parse_content_range("bytes */1234"), None);
    assert_eq!(parse_content_range("bytes 9-1/10"), None);
    assert_eq!(parse_content_range("items 0-1/2"), None);
    assert_eq!(parse_content_range("bytes 0-x/2"), None);
}
