//! The destinations' windows: given on the command line (`--window DEST=SECONDS`), and looked
//! up for a connected socket by its remote, for an accepted one by its peer's address.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use keepalive_schema::seconds::parse_seconds;

use super::model::{Window, WindowSource};

/// What a window is for: one service (`ip:port`) or every port of a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `ip:port` (`[v6]:port`).
    Service(SocketAddr),
    /// Every port of an address.
    Host(IpAddr),
}

impl Destination {
    fn ip(self) -> IpAddr {
        match self {
            Self::Service(service) => service.ip(),
            Self::Host(host) => host,
        }
    }
}

/// One `--window DEST=SECONDS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GivenWindow {
    /// For what.
    pub destination: Destination,
    /// The timeout.
    pub timeout: Duration,
}

impl FromStr for GivenWindow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (destination, seconds) = text.rsplit_once('=').ok_or_else(|| {
            format!(
                "`{text}` is not DEST=SECONDS (e.g. 198.51.100.100:80=1800 or 198.51.100.100=1800)"
            )
        })?;
        let destination = if let Ok(service) = destination.parse::<SocketAddr>() {
            Destination::Service(service)
        } else if let Ok(host) = destination.parse::<IpAddr>() {
            Destination::Host(host)
        } else {
            return Err(format!(
                "`{destination}` in `{text}` is neither an address nor address:port"
            ));
        };
        let timeout = parse_seconds(seconds).map_err(|e| format!("{e} in `{text}`"))?;
        if timeout.is_zero() {
            return Err(format!("the timeout in `{text}` must be above 0"));
        }
        Ok(Self {
            destination,
            timeout,
        })
    }
}

/// Every window known: learned ones, and the given ones for what nothing was learned about.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    entries: Vec<(Destination, Window)>,
}

impl Windows {
    /// Learned windows first: a given one only counts where nothing was learned.
    pub fn new(learned: Vec<(SocketAddr, Window)>, given: &[GivenWindow]) -> Self {
        let mut entries: Vec<_> = learned
            .into_iter()
            .map(|(remote, window)| (Destination::Service(remote), window))
            .collect();
        entries.extend(given.iter().map(|g| {
            let window = Window {
                bound: g.timeout,
                upper: None,
                source: WindowSource::Given,
            };
            (g.destination, window)
        }));
        Self { entries }
    }

    /// The window of a connected socket's remote: its service's, else its host's.
    pub fn for_remote(&self, remote: SocketAddr) -> Option<Window> {
        let service = Destination::Service(remote);
        let host = Destination::Host(remote.ip());
        self.entries
            .iter()
            .find(|(d, _)| *d == service)
            .or_else(|| self.entries.iter().find(|(d, _)| *d == host))
            .map(|(_, w)| *w)
    }

    /// For an accepted socket: the longest of the windows towards the peer's address (any
    /// port), since the peer's client port says nothing about the path.
    pub fn towards_peer(&self, peer: IpAddr) -> Option<Window> {
        self.entries
            .iter()
            .filter(|(d, _)| d.ip() == peer)
            .map(|(_, w)| *w)
            .max_by_key(|w| w.bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_windows_parse_and_bad_ones_say_what_is_wrong() {
        let service: GivenWindow = "198.51.100.100:80=1800".parse().unwrap();
        assert_eq!(
            service.destination,
            Destination::Service("198.51.100.100:80".parse().unwrap())
        );
        assert_eq!(service.timeout, Duration::from_secs(1800));
        let host: GivenWindow = "fd6b:a1::2=4.5".parse().unwrap();
        assert_eq!(
            host.destination,
            Destination::Host("fd6b:a1::2".parse().unwrap())
        );
        let v6: GivenWindow = "[fd6b:a1::2]:443=60".parse().unwrap();
        assert!(matches!(v6.destination, Destination::Service(_)));
        assert!(
            "198.51.100.100:80"
                .parse::<GivenWindow>()
                .unwrap_err()
                .contains("DEST=SECONDS")
        );
        assert!(
            "example.com=10"
                .parse::<GivenWindow>()
                .unwrap_err()
                .contains("example.com")
        );
        assert!(
            "198.51.100.1=soon"
                .parse::<GivenWindow>()
                .unwrap_err()
                .contains("soon")
        );
        assert!(
            "198.51.100.1=0"
                .parse::<GivenWindow>()
                .unwrap_err()
                .contains("above 0")
        );
    }

    #[test]
    fn learned_wins_then_a_service_over_its_host_and_peers_take_the_longest() {
        let windows = Windows::new(
            vec![(
                "198.51.100.100:80".parse().unwrap(),
                Window {
                    bound: Duration::from_secs(4),
                    upper: Some(Duration::from_secs(6)),
                    source: WindowSource::Learned,
                },
            )],
            &[
                "198.51.100.100=30".parse().unwrap(),
                "198.51.100.100:8080=9".parse().unwrap(),
                "198.51.100.100:80=5".parse().unwrap(),
            ],
        );
        let remote = |s: &str| windows.for_remote(s.parse().unwrap()).map(|w| w.bound);
        assert_eq!(remote("198.51.100.100:80"), Some(Duration::from_secs(4)));
        assert_eq!(remote("198.51.100.100:8080"), Some(Duration::from_secs(9)));
        assert_eq!(remote("198.51.100.100:22"), Some(Duration::from_secs(30)));
        assert_eq!(remote("198.51.100.7:80"), None);
        let peer = windows.towards_peer("198.51.100.100".parse().unwrap());
        assert_eq!(peer.map(|w| w.bound), Some(Duration::from_secs(30)));
    }
}
