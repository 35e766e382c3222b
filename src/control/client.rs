//! The command's side of the control channel.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::{ControlError, MAX_RESPONSE, MountStatus, Request, Response};

/// Stats and clear answer at once; a mount that does not is stuck, and the command
/// should say so rather than hang. Listing and warming take as long as S3 does.
const QUICK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Client {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(socket: &Path) -> Result<Client, ControlError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|err| ControlError::Connect {
                path: socket.to_path_buf(),
                err,
            })?;
        let (read, write) = stream.into_split();
        Ok(Client {
            read: BufReader::new(read),
            write,
        })
    }

    /// Sends one request and waits for its answer. An [`Response::Error`] from the mount
    /// becomes [`ControlError::Remote`].
    pub async fn call(&mut self, req: &Request) -> Result<Response, ControlError> {
        let quick = matches!(req, Request::Stats | Request::Clear);
        let exchange = self.exchange(req);
        let response = if quick {
            tokio::time::timeout(QUICK_TIMEOUT, exchange)
                .await
                .map_err(|_| ControlError::Timeout(QUICK_TIMEOUT.as_secs()))??
        } else {
            exchange.await?
        };
        match response {
            Response::Error { message } => Err(ControlError::Remote(message)),
            r => Ok(r),
        }
    }

    async fn exchange(&mut self, req: &Request) -> Result<Response, ControlError> {
        let mut line =
            serde_json::to_vec(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.write.write_all(&line).await?;
        let mut buf = Vec::new();
        let n = (&mut self.read)
            .take(MAX_RESPONSE)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Err(ControlError::Protocol(
                "the mount closed the connection".into(),
            ));
        }
        serde_json::from_slice(&buf).map_err(|e| ControlError::Protocol(e.to_string()))
    }

    /// Asks for the stats and where the mount is.
    pub async fn status(&mut self) -> Result<MountStatus, ControlError> {
        match self.call(&Request::Stats).await? {
            Response::Stats(s) => Ok(s),
            other => Err(ControlError::Protocol(format!("{other:?}"))),
        }
    }
}
