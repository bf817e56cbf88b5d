//! A pcap file writer (the classic libpcap format that tcpdump, tshark and
//! Wireshark read): a 24-byte file header, then a 16-byte record header and
//! the bytes of each frame, microsecond timestamps, link type
//! `LINKTYPE_ETHERNET` (frames captured on `lo` have a 14-byte Ethernet
//! header of zeros).
//!
//! Written by hand: the format is two fixed headers
//! (<https://www.tcpdump.org/manpages/pcap-savefile.5.html>), and a crate for
//! them would bring more code than this file.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// The magic number of a microsecond-resolution pcap file.
pub const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// The largest frame kept whole (tcpdump's default snapshot length).
pub const SNAPLEN: u32 = 262_144;

/// Writes the file header: magic, version 2.4, no time zone offset, no
/// accuracy, the snapshot length, the link type (all little-endian, the
/// byte order that the magic number announces to the reader).
pub fn write_header(out: &mut impl Write) -> io::Result<()> {
    out.write_all(&MAGIC_MICROS.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?; // version major
    out.write_all(&4u16.to_le_bytes())?; // version minor
    out.write_all(&0i32.to_le_bytes())?; // thiszone
    out.write_all(&0u32.to_le_bytes())?; // sigfigs
    out.write_all(&SNAPLEN.to_le_bytes())?;
    out.write_all(&LINKTYPE_ETHERNET.to_le_bytes())
}

/// Writes one frame: timestamp (seconds, microseconds), captured length,
/// original length, then the bytes (cut at [`SNAPLEN`]).
pub fn write_frame(
    out: &mut impl Write,
    ts: SystemTime,
    data: &[u8],
    wire_len: usize,
) -> io::Result<()> {
    let t = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
    let kept = &data[..data.len().min(SNAPLEN as usize)];
    out.write_all(&(t.as_secs() as u32).to_le_bytes())?;
    out.write_all(&t.subsec_micros().to_le_bytes())?;
    out.write_all(&(kept.len() as u32).to_le_bytes())?;
    out.write_all(&(wire_len.max(kept.len()) as u32).to_le_bytes())?;
    out.write_all(kept)
}

/// Writes a whole file: the header, then every `(timestamp, frame, wire length)`.
pub fn write<'a>(
    out: &mut impl Write,
    frames: impl IntoIterator<Item = (SystemTime, &'a [u8], usize)>,
) -> io::Result<()> {
    write_header(out)?;
    for (ts, data, len) in frames {
        write_frame(out, ts, data, len)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn header_and_record_layout() {
        let ts = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let mut v = vec![];
        write(&mut v, [(ts, &[0xaa, 0xbb][..], 2)]).unwrap();
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[0xd4, 0xc3, 0xb2, 0xa1][..], // magic, little-endian
            &[2, 0, 4, 0],                 // version 2.4
            &[0, 0, 0, 0],                 // thiszone
            &[0, 0, 0, 0],                 // sigfigs
            &[0, 0, 4, 0],                 // snaplen 262144
            &[1, 0, 0, 0],                 // LINKTYPE_ETHERNET
            &1_700_000_000u32.to_le_bytes(), // seconds
            &123_456u32.to_le_bytes(),     // microseconds
            &[2, 0, 0, 0],                 // captured length
            &[2, 0, 0, 0],                 // original length
            &[0xaa, 0xbb],                 // the frame
        ]
        .concat();
        assert_eq!(v, expected);
    }

    #[test]
    fn a_truncated_frame_keeps_its_wire_length() {
        let mut v = vec![];
        write_frame(&mut v, UNIX_EPOCH, &[1, 2, 3], 1500).unwrap();
        assert_eq!(&v[8..12], &3u32.to_le_bytes());
        assert_eq!(&v[12..16], &1500u32.to_le_bytes());
    }
}
