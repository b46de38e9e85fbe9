//! The configuration as it runs, and back to TOML (`serve --print-config`).

use super::*;

/// The configuration the server runs with, checked, with what lives outside `ServerConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub server: ServerConfig,
    /// The exec settings with the working directory filled in (they apply only when the
    /// allow-list is not empty).
    pub exec: ExecSettings,
    pub secret_file: Option<PathBuf>,
    /// The control socket (reload, hand-over); `None`: there is none.
    pub control: Option<PathBuf>,
    pub log: LogLevel,
}

impl Effective {
    /// Every setting as TOML that `--config` reads back to the same configuration: every key,
    /// every listener, and each listener's own socket options in full.
    pub fn to_toml(&self) -> Result<String, ConfigFileError> {
        let s = &self.server;
        let file = FileConfig {
            workers: Some(Workers(s.workers)),
            data_dir: Some(s.files.data_dir.clone()),
            control: self.control.clone(),
            log: Some(self.log),
            limits: Some(LimitsFile {
                max_conns: Some(Count(s.limits.max_conns)),
                max_conns_per_ip: Some(PerIp(s.limits.max_conns_per_ip)),
                idle_timeout: Some(Dur(s.limits.idle_timeout.unwrap_or_default())),
                request_timeout: Some(Dur(s.limits.request_timeout.unwrap_or_default())),
                handshake_timeout: Some(Dur(s.limits.handshake_timeout.unwrap_or_default())),
                tls_handshake_timeout: Some(NonZeroDur(s.limits.tls_handshake_timeout)),
                shutdown_grace: Some(Dur(s.limits.shutdown_grace)),
                pending_pause: Some(Size(s.limits.pending_pause)),
                max_pending: Some(Size(s.limits.max_pending)),
                max_input: Some(Size(s.limits.max_input)),
                read_budget: Some(Size(s.limits.read_budget)),
                accept_budget: Some(Count(s.limits.accept_budget)),
                datagram_budget: Some(Count(s.limits.datagram_budget)),
                max_queued_datagrams: Some(s.limits.max_queued_datagrams),
                chat_max_pending: Some(Size(s.limits.chat_max_pending)),
                udp_chat_expiry: Some(Dur(s.datagram.udp_chat_expiry)),
                udp_chat_max_members: Some(Count(s.datagram.udp_chat_max_members)),
                discovery_rate: Some(s.datagram.discovery_rate),
            }),
            socket: Some(SocketFile::full(&s.sockopts)),
            auth: Some(AuthFile {
                secret_file: self.secret_file.clone(),
                timeout: Some(NonZeroDur(s.auth_timeout)),
            }),
            files: Some(FilesFile {
                max_upload: Some(UploadLimit(
                    s.files
                        .config
                        .max_upload
                        .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                )),
                max_header: Some(Size(s.files.config.max_header)),
                upload_in_flight: Some(Size(
                    usize::try_from(s.files.config.upload_in_flight).unwrap_or(usize::MAX),
                )),
            }),
            exec: Some(ExecFile {
                allow: Some(Spanned::new(0..0, self.exec.allow.clone())),
                timeout: Some(NonZeroDur(self.exec.timeout)),
                max_output: Some(SizeOrZero(self.exec.max_output)),
                max_procs: Some(Count(self.exec.max_procs)),
                containment: Some(self.exec.containment),
                workdir: self.exec.workdir.clone(),
            }),
            chat: s.chat_bus.as_ref().map(|bus| super::super::bus::ChatFile {
                bus: Some(super::super::bus::BusFile::of(bus)),
            }),
            listeners: Some(
                s.listeners
                    .iter()
                    .map(|l| {
                        Spanned::new(
                            0..0,
                            ListenerFile {
                                service: Service(l.service),
                                addr: Some(Spanned::new(0..0, Addr(l.addr.clone()))),
                                auth: Some(Spanned::new(0..0, l.auth)),
                                max_conns_per_ip: l.max_conns_per_ip,
                                proxy_protocol: l.proxy_protocol,
                                tls: l.tls.clone(),
                                socket: l.sockopts.as_ref().map(SocketFile::full),
                            },
                        )
                    })
                    .collect(),
            ),
        };
        let body = toml::to_string(&file)?;
        Ok(format!(
            "# The effective configuration of `socklab serve` (defaults, file and flags).\n\
             # `socklab serve --config FILE` reads it back; see socklab.example.toml for what\n\
             # each key does.\n\n{body}"
        ))
    }
}
