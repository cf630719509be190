//! Connections by risk per destination, from the periodic socket audit (`sockets`): a gauge
//! per destination and risk, for the destinations with a window (learned, or towards a peer
//! for accepted connections). The label set stays bounded: the `cap` destinations with the most
//! connections get series of their own, the rest are summed into `destination="other"`.

use std::collections::HashMap;

use keepalive_schema::socket::Risk;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};

use super::windows::OTHER;
use crate::sockets::report::Judged;

/// One destination and risk.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `ip:port` of the remote a connection was made to, the peer's `ip` for accepted ones,
    /// or [`OTHER`].
    pub destination: String,
    /// `will_reset`, `at_risk`, `orphan_suspect` or `ok`.
    pub risk: &'static str,
}

/// The gauges, shared with the thread that runs the audits.
#[derive(Clone, Debug)]
pub struct ConnectionGauges {
    family: Family<ConnectionLabels, Gauge>,
    cap: usize,
}

impl ConnectionGauges {
    pub(super) fn new(family: Family<ConnectionLabels, Gauge>, cap: usize) -> Self {
        Self {
            family,
            cap: cap.max(1),
        }
    }

    /// Replaces every series with what one audit found.
    pub fn publish(&self, judged: &[Judged]) {
        let mut by_destination: HashMap<String, [i64; 4]> = HashMap::new();
        for (connection, verdict) in judged.iter().filter(|(c, _)| c.window.is_some()) {
            let destination = if connection.accepted {
                connection.diag.remote.ip().to_string()
            } else {
                connection.diag.remote.to_string()
            };
            by_destination.entry(destination).or_default()[slot(verdict.risk)] += 1;
        }
        let mut ranked: Vec<_> = by_destination.into_iter().collect();
        ranked.sort_by(|(a, ca), (b, cb)| {
            cb.iter()
                .sum::<i64>()
                .cmp(&ca.iter().sum::<i64>())
                .then(a.cmp(b))
        });
        let mut shown: Vec<(String, [i64; 4])> = Vec::new();
        for (index, (destination, counts)) in ranked.into_iter().enumerate() {
            if index < self.cap {
                shown.push((destination, counts));
            } else if let Some((_, other)) = shown.iter_mut().find(|(d, _)| d == OTHER) {
                other.iter_mut().zip(counts).for_each(|(o, c)| *o += c);
            } else {
                shown.push((OTHER.to_owned(), counts));
            }
        }
        self.family.clear();
        for (destination, counts) in shown {
            for risk in Risk::ALL {
                let labels = ConnectionLabels {
                    destination: destination.clone(),
                    risk: risk.as_str(),
                };
                self.family.get_or_create(&labels).set(counts[slot(risk)]);
            }
        }
    }
}

fn slot(risk: Risk) -> usize {
    match risk {
        Risk::WillReset => 0,
        Risk::AtRisk => 1,
        Risk::OrphanSuspect => 2,
        Risk::Ok => 3,
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;
    use crate::sockets::{
        model::{Connection, DiagSocket, Keepalive, Window, WindowSource},
        risk::judge,
    };

    fn idle(remote: &str, idle_s: u64, accepted: bool) -> Judged {
        let connection = Connection {
            netns: 1,
            diag: DiagSocket {
                cookie: 1,
                local: "198.51.100.2:40000".parse::<SocketAddr>().unwrap(),
                remote: remote.parse().unwrap(),
                state: 1,
                inode: 1,
                timer: None,
                idle_rx: Some(Duration::from_secs(idle_s)),
                idle_tx: Some(Duration::from_secs(idle_s)),
                retransmits: 0,
                probes: 0,
            },
            accepted,
            owner: None,
            keepalive: Some(Keepalive {
                on: false,
                idle: Duration::from_secs(7200),
                interval: Duration::from_secs(75),
                count: 9,
                idle_from_socket: false,
            }),
            window: Some(Window {
                bound: Duration::from_secs(4),
                upper: Some(Duration::from_secs(6)),
                source: WindowSource::Learned,
            }),
        };
        let verdict = judge(&connection);
        (connection, verdict)
    }

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn counts_by_destination_and_risk_fold_past_the_cap_and_replace_the_last_audit() {
        let family = Family::default();
        let mut registry = Registry::default();
        registry.register("connections", "test", family.clone());
        let gauges = ConnectionGauges::new(family, 2);
        let mut judged = vec![
            idle("198.51.100.100:80", 10, false),
            idle("198.51.100.100:80", 1, false),
            idle("198.51.100.100:80", 3, false),
            idle("198.51.100.101:80", 10, false),
            idle("198.51.100.102:80", 10, false),
            idle("198.51.100.103:80", 10, true),
        ];
        let mut unjudged = idle("198.51.100.104:80", 10, false);
        unjudged.0.window = None;
        judged.push(unjudged);
        gauges.publish(&judged);
        let text = scrape(&registry);
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has(r#"connections{destination="198.51.100.100:80",risk="will_reset"} 1"#),
            "{text}"
        );
        assert!(
            has(r#"connections{destination="198.51.100.100:80",risk="at_risk"} 1"#),
            "{text}"
        );
        assert!(
            has(r#"connections{destination="198.51.100.100:80",risk="ok"} 1"#),
            "{text}"
        );
        // Past the cap of two destinations: the rest (one connected, one accepted) are summed.
        assert!(
            has(r#"connections{destination="other",risk="will_reset"} 1"#),
            "{text}"
        );
        assert!(
            has(r#"connections{destination="other",risk="orphan_suspect"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains("198.51.100.104"),
            "no window, no series: {text}"
        );
        gauges.publish(&judged[..1]);
        let text = scrape(&registry);
        assert!(
            !text.contains("other"),
            "the last audit replaces the series: {text}"
        );
    }
}
