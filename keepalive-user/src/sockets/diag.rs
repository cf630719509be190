//! The connections of the current network namespace from inet_diag (`NETLINK_SOCK_DIAG`),
//! with `tcp_info` for the idle times, retransmits and probes.

use std::{io, net::SocketAddr, time::Duration};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::model::{DiagSocket, Timer};

/// Errors reading inet_diag.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// The netlink socket could not be opened, bound or used.
    #[error("inet_diag netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel answered the dump request with an error.
    #[error("inet_diag dump of {family} sockets refused by the kernel: {message}")]
    Refused {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The kernel's error.
        message: String,
    },
    /// A reply could not be decoded.
    #[error("inet_diag reply for {family} sockets cannot be decoded: {message}")]
    Decode {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// What the decoder said.
        message: String,
    },
}

/// What one namespace's dump returned.
#[derive(Debug, Default)]
pub struct Dump {
    /// Every TCP socket (listeners included, time-wait and request sockets left out).
    pub sockets: Vec<DiagSocket>,
    /// The kernel marked the dump as interrupted (sockets came and went while it ran): some
    /// may be missing or seen twice.
    pub interrupted: bool,
}

/// Every TCP socket of the calling thread's network namespace, IPv4 and IPv6.
pub fn dump() -> Result<Dump, DiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Socket)?;
    socket.bind_auto().map_err(DiagError::Socket)?;
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .map_err(DiagError::Socket)?;
    let mut dump = Dump::default();
    for (family, name, id) in [
        (AF_INET, "IPv4", SocketId::new_v4()),
        (AF_INET6, "IPv6", SocketId::new_v6()),
    ] {
        request(&socket, family, id)?;
        receive(&socket, name, &mut dump)?;
    }
    Ok(dump)
}

fn request(socket: &Socket, family: u8, socket_id: SocketId) -> Result<(), DiagError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    // Time-wait and request sockets have no keepalive and no owner: they are left out.
    let states = StateFlags::all() - StateFlags::TIME_WAIT - StateFlags::SYN_RECV;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states,
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    socket.send(&bytes, 0).map_err(DiagError::Socket)?;
    Ok(())
}

fn receive(socket: &Socket, family: &'static str, dump: &mut Dump) -> Result<(), DiagError> {
    let decode = |message: String| DiagError::Decode { family, message };
    // Large enough for the kernel's dump batches (it fills up to 32 KiB per datagram).
    let mut buffer = Vec::with_capacity(64 * 1024);
    loop {
        buffer.clear();
        let size = socket.recv(&mut buffer, 0).map_err(DiagError::Socket)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buffer[offset..size])
                .map_err(|e| decode(e.to_string()))?;
            let length = message.header.length as usize;
            if message.header.flags & NLM_F_DUMP_INTR != 0 {
                dump.interrupted = true;
            }
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    dump.sockets.push(socket_of(&response));
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => {
                    return Err(DiagError::Refused {
                        family,
                        message: error.to_string(),
                    });
                }
                _ => {}
            }
            if length == 0 {
                return Err(decode("a message of length 0".to_owned()));
            }
            offset += length;
        }
    }
}

fn socket_of(response: &InetResponse) -> DiagSocket {
    let header = &response.header;
    let id = &header.socket_id;
    let timer = header.timer.as_ref().map(|timer| {
        use netlink_packet_sock_diag::inet::Timer as Raw;
        match *timer {
            Raw::Retransmit(after, _) => Timer::Retransmit(after),
            Raw::KeepAlive(after) => Timer::Keepalive(after),
            Raw::TimeWait => Timer::TimeWait,
            Raw::Probe(after) => Timer::ZeroWindowProbe(after),
        }
    });
    let mut socket = DiagSocket {
        cookie: u64::from_ne_bytes(id.cookie),
        // A dual-stack socket's IPv4 peer is shown (and matched to windows) as IPv4.
        local: SocketAddr::new(id.source_address.to_canonical(), id.source_port),
        remote: SocketAddr::new(id.destination_address.to_canonical(), id.destination_port),
        state: header.state,
        inode: header.inode,
        timer,
        idle_rx: None,
        idle_tx: None,
        retransmits: 0,
        probes: 0,
    };
    for nla in &response.nlas {
        if let Nla::TcpInfo(info) = nla {
            // Any segment received refreshes a middlebox's idle timer, so the receive side
            // counts from the last segment (`rcv_tstamp`), not the last data; the send side
            // from the last data sent (`lsndtime`), as the daemon reads them.
            socket.idle_rx = Some(Duration::from_millis(info.last_ack_recv.into()));
            socket.idle_tx = Some(Duration::from_millis(info.last_data_sent.into()));
            socket.retransmits = info.retransmits;
            socket.probes = info.probes;
        }
    }
    socket
}
