//! The floor under any HTTP proxy on this machine, for the load bench: a relay that moves whole
//! HTTP/1.1 messages between a client connection and one upstream connection of its own, with
//! no HTTP library, no routing, no pool and no parsing beyond finding where a message ends
//! (`Content-Length` bodies only, which is what the fixture and the load client send). What it
//! adds over a direct call is the cost of the second exchange itself: two more sockets' reads
//! and writes and the wakeups between them.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Messages larger than this end the connection (the bench's are a few hundred bytes).
const MAX_MESSAGE: usize = 1 << 20;

/// Serves on `listener` until the runtime stops, relaying every connection to `upstream`.
pub async fn serve(listener: TcpListener, upstream: SocketAddr) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors, say: give the runtime a moment instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = relay(client, upstream).await;
        });
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let mut down_buf = Vec::with_capacity(4096);
    let mut up_buf = Vec::with_capacity(4096);
    loop {
        let Some(request) = read_message(&mut client, &mut down_buf).await? else {
            return Ok(());
        };
        up.write_all(&down_buf[..request]).await?;
        down_buf.drain(..request);
        let Some(response) = read_message(&mut up, &mut up_buf).await? else {
            return Ok(());
        };
        client.write_all(&up_buf[..response]).await?;
        up_buf.drain(..response);
    }
}

/// Reads until `buf` holds one whole message; returns its length, or `None` at a clean end.
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(len) = message_len(buf)? {
            return Ok(Some(len));
        }
        if buf.len() > MAX_MESSAGE {
            return Err(std::io::Error::other("message too large"));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The length of the first whole message in `buf` (head and `Content-Length` body), if there.
fn message_len(buf: &[u8]) -> std::io::Result<Option<usize>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| std::io::Error::other("head is not UTF-8"))?;
    let body = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map_or(Ok(0), |(_, v)| v.trim().parse::<usize>())
        .map_err(|_| std::io::Error::other("bad Content-Length"))?;
    let total = head_end + body;
    Ok((buf.len() >= total).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::message_len;

    #[test]
    fn a_message_ends_after_its_content_length() {
        let msg = b"POST /mcp HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(message_len(msg).ok().flatten(), Some(msg.len()));
        assert_eq!(message_len(&msg[..msg.len() - 1]).ok().flatten(), None);
        let no_body = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\nHTTP/1.1";
        assert_eq!(message_len(no_body).ok().flatten(), Some(no_body.len() - 8));
        assert!(message_len(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    }
}
