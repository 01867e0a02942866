//! The uncompressed kernel (`vmlinux`, an ELF) from a `bzImage`, for hypervisors that
//! boot ELF kernels (Firecracker). The boot protocol header says where the compressed
//! payload is, so there is no need to scan for magic numbers as `extract-vmlinux` does.

use anyhow::{Context, Result, bail, ensure};
use std::io::Read;

const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const PROTOCOL_VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;

fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    let bytes = data.get(at..at + 4).context("bzImage header truncated")?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

/// The compressed payload inside a bzImage (boot protocol 2.08 or later).
pub fn payload(bzimage: &[u8]) -> Result<&[u8]> {
    ensure!(
        bzimage.get(HEADER_MAGIC..HEADER_MAGIC + 4) == Some(b"HdrS"),
        "not a bzImage"
    );
    let version = u16::from_le_bytes(
        bzimage
            .get(PROTOCOL_VERSION..PROTOCOL_VERSION + 2)
            .context("bzImage header truncated")?
            .try_into()?,
    );
    ensure!(
        version >= 0x208,
        "boot protocol {version:#x} has no payload fields"
    );
    let setup_sects = match bzimage[SETUP_SECTS] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(bzimage, PAYLOAD_OFFSET)? as usize;
    let length = u32_at(bzimage, PAYLOAD_LENGTH)? as usize;
    bzimage
        .get(start..start + length)
        .context("payload lies outside the bzImage")
}

const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Each block of the legacy LZ4 format decompresses to at most this.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// LZ4's legacy frame, as the kernel uses it: blocks of `le32 length, data`; the build
/// appends the uncompressed size as a last `le32`, which reads as a length that runs past
/// the end.
fn lz4_legacy(mut input: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while input.len() >= 4 {
        let word = u32::from_le_bytes(input[..4].try_into()?);
        input = &input[4..];
        if word == LZ4_LEGACY_MAGIC {
            continue;
        }
        let length = word as usize;
        if length > input.len() {
            break;
        }
        let n = lz4_flex::block::decompress_into(&input[..length], &mut block)
            .map_err(|e| anyhow::anyhow!("LZ4 block: {e}"))?;
        out.extend_from_slice(&block[..n]);
        input = &input[length..];
    }
    Ok(out)
}

pub fn decompress(payload: &[u8]) -> Result<Vec<u8>> {
    let out = match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => lz4_legacy(payload)?,
        [0x1f, 0x8b, ..] => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(payload).read_to_end(&mut out)?;
            out
        }
        [0x7f, b'E', b'L', b'F', ..] => payload.to_vec(),
        _ => bail!(
            "kernel payload compressed with an unsupported method (magic {:02x?})",
            &payload[..payload.len().min(4)]
        ),
    };
    ensure!(
        out.starts_with(b"\x7fELF"),
        "decompressed kernel is not an ELF file"
    );
    Ok(out)
}

pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>> {
    decompress(payload(bzimage)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 2 * 512];
        image[SETUP_SECTS] = 1;
        image[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        image[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&0x20fu16.to_le_bytes());
        image[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&16u32.to_le_bytes());
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&[0u8; 16]);
        image.extend_from_slice(payload);
        image.extend_from_slice(b"trailing setup data");
        image
    }

    fn elf_like() -> Vec<u8> {
        let mut data = b"\x7fELF".to_vec();
        data.extend((0..200_000u32).map(|i| (i % 251) as u8));
        data
    }

    #[test]
    fn extracts_lz4_legacy_payload() {
        let elf = elf_like();
        let block = lz4_flex::block::compress(&elf);
        let mut payload = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        assert_eq!(extract(&fake_bzimage(&payload)).unwrap(), elf);
    }

    #[test]
    fn extracts_gzip_payload() {
        use std::io::Write;
        let elf = elf_like();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        assert_eq!(extract(&fake_bzimage(&gz.finish().unwrap())).unwrap(), elf);
    }

    #[test]
    fn refuses_what_is_not_a_bzimage() {
        assert!(extract(&[0u8; 4096]).is_err());
        assert!(extract(&fake_bzimage(b"BZh91AY&SY")).is_err());
    }
}
