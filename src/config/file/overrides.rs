//! What the command line changes over the file: a service's listeners moved, authentication
//! or the PROXY protocol turned on, a socket option everywhere, the exec allow-list. Each keeps
//! what the file said where the flag says nothing.

use super::{Origin, ServeSettings};
use crate::addr::ListenAddr;
use crate::config::{ListenerConfig, SocketOptions};
use crate::kind::ServiceKind;

impl ServeSettings {
    /// Makes `addrs` the only listeners of `service` (none: the service does not start). They
    /// take the place of the ones they replace, and keep authentication (and the PROXY
    /// protocol) if any of those had it, so that moving a service to another address never
    /// drops its authentication.
    pub fn set_service(&mut self, service: ServiceKind, addrs: &[ListenAddr]) {
        self.origins.resize(self.server.listeners.len(), None);
        let listeners = std::mem::take(&mut self.server.listeners);
        let origins = std::mem::take(&mut self.origins);
        let at = listeners
            .iter()
            .position(|l| l.service == service)
            .unwrap_or(listeners.len());
        let auth = listeners.iter().any(|l| l.service == service && l.auth);
        let proxy_protocol = listeners
            .iter()
            .filter(|l| l.service == service)
            .find_map(|l| l.proxy_protocol);
        let tls = listeners
            .iter()
            .filter(|l| l.service == service)
            .find_map(|l| l.tls.clone());
        let mut kept: Vec<(ListenerConfig, Option<Origin>)> = listeners
            .into_iter()
            .zip(origins)
            .filter(|(l, _)| l.service != service)
            .collect();
        let at = at.min(kept.len());
        let new = addrs.iter().map(|addr| {
            let l = ListenerConfig {
                service,
                addr: addr.clone(),
                auth,
                sockopts: None,
                max_conns_per_ip: None,
                proxy_protocol,
                tls: tls.clone(),
            };
            (l, None)
        });
        kept.splice(at..at, new);
        (self.server.listeners, self.origins) = kept.into_iter().unzip();
    }

    /// Every listener of `service` expects a PROXY protocol header of `versions` first.
    pub fn require_proxy_protocol(
        &mut self,
        service: ServiceKind,
        versions: crate::frame::proxy::ProxyVersions,
    ) {
        for l in &mut self.server.listeners {
            if l.service == service {
                l.proxy_protocol = Some(versions);
            }
        }
    }

    /// Every stream listener of `service` serves TLS with these files.
    pub fn require_tls(&mut self, service: ServiceKind, files: &crate::config::TlsFiles) {
        for l in &mut self.server.listeners {
            if l.service == service {
                l.tls = Some(files.clone());
            }
        }
    }

    /// Turns authentication on for every listener of `service`.
    pub fn require_auth(&mut self, service: ServiceKind) {
        for l in &mut self.server.listeners {
            if l.service == service {
                l.auth = true;
            }
        }
    }

    /// Changes a socket option everywhere: in the global options and in every listener's own.
    pub fn socket_option(&mut self, change: impl Fn(&mut SocketOptions)) {
        change(&mut self.server.sockopts);
        for o in self
            .server
            .listeners
            .iter_mut()
            .filter_map(|l| l.sockopts.as_mut())
        {
            change(o);
        }
    }

    /// The exec allow-list is now `allow` (from the flags).
    pub fn set_exec_allow(&mut self, allow: Vec<String>) {
        self.exec.allow = allow;
        self.exec_allow_line = None;
    }
}
