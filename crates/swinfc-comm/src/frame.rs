//! Length-prefixed frames of the control protocol: a big-endian `u32` payload length, then that
//! many bytes of JSON. A length over [`MAX_FRAME`] (or the smaller limit the caller sets) or a
//! payload that is not a valid message is a malformed frame: the reader reports it and the
//! connection is closed, so a confused or hostile peer can cost at most one frame of memory.

use serde::{Serialize, de::DeserializeOwned};
use std::io::{Read, Write};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::CommError;

/// Largest accepted payload. Control messages are small (keys, addresses, metrics records);
/// bulk data goes through the collectives, never through the control server.
pub const MAX_FRAME: usize = 1 << 20;

/// Serialises `msg` into one frame (header included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CommError> {
    let payload =
        serde_json::to_vec(msg).map_err(|e| CommError::Invalid(format!("unserialisable message: {e}")))?;
    if payload.len() > MAX_FRAME {
        return Err(CommError::Invalid(format!(
            "message of {} bytes exceeds the frame limit of {MAX_FRAME}",
            payload.len()
        )));
    }
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn check_len(header: [u8; 4], max: usize, peer: &str) -> Result<usize, CommError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(CommError::Frame {
            peer: peer.into(),
            reason: format!("length {len} exceeds {max}"),
        });
    }
    Ok(len)
}

fn decode<T: DeserializeOwned>(payload: &[u8], peer: &str) -> Result<T, CommError> {
    serde_json::from_slice(payload).map_err(|e| CommError::Frame {
        peer: peer.into(),
        reason: e.to_string(),
    })
}

fn read_err(peer: &str, e: std::io::Error) -> CommError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        CommError::Closed { peer: peer.into() }
    } else {
        CommError::io(peer, e)
    }
}

/// Blocking write of one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T, peer: &str) -> Result<(), CommError> {
    let bytes = encode(msg)?;
    w.write_all(&bytes)
        .and_then(|()| w.flush())
        .map_err(|e| CommError::io(peer, e))
}

/// Blocking read of one frame.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read, peer: &str) -> Result<T, CommError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).map_err(|e| read_err(peer, e))?;
    let mut payload = vec![0u8; check_len(header, MAX_FRAME, peer)?];
    r.read_exact(&mut payload).map_err(|e| read_err(peer, e))?;
    decode(&payload, peer)
}

/// Async write of one frame.
pub async fn write_frame_async<T: Serialize>(
    w: &mut (impl AsyncWrite + Unpin),
    msg: &T,
    peer: &str,
) -> Result<(), CommError> {
    let bytes = encode(msg)?;
    w.write_all(&bytes).await.map_err(|e| CommError::io(peer, e))?;
    w.flush().await.map_err(|e| CommError::io(peer, e))
}

/// Async read of one frame of at most `max` (≤ [`MAX_FRAME`]) payload bytes.
pub async fn read_frame_async<T: DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
    peer: &str,
) -> Result<T, CommError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).await.map_err(|e| read_err(peer, e))?;
    let mut payload = vec![0u8; check_len(header, max.min(MAX_FRAME), peer)?];
    r.read_exact(&mut payload).await.map_err(|e| read_err(peer, e))?;
    decode(&payload, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let bytes = encode(&serde_json::json!({"a": [1, 2, 3]})).unwrap();
        let v: serde_json::Value = read_frame(&mut bytes.as_slice(), "t").unwrap();
        assert_eq!(v["a"][2], 3);

        let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(
            read_frame::<serde_json::Value>(&mut huge.as_slice(), "t"),
            Err(CommError::Frame { .. })
        ));

        let mut junk = 3u32.to_be_bytes().to_vec();
        junk.extend_from_slice(b"{{{");
        assert!(matches!(
            read_frame::<serde_json::Value>(&mut junk.as_slice(), "t"),
            Err(CommError::Frame { .. })
        ));

        let short = 10u32.to_be_bytes();
        assert!(matches!(
            read_frame::<serde_json::Value>(&mut short.as_slice(), "t"),
            Err(CommError::Closed { .. })
        ));
    }
}
