//! `Client`: a typed async client for every control-plane endpoint.

use std::collections::BTreeMap;

use futures::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::apps::*;
use crate::error::ErrorBody;
use crate::hosts::*;
use crate::machine::*;
use crate::tokens::{CreateTokenRequest, CreateTokenResponse};
use crate::LEASE_NONCE_HEADER;

/// What can go wrong talking to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// The request could not be sent or the answer not read.
    #[error("Request to {url} failed")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not the expected JSON.
    #[error("Answer from {url} is not the expected JSON")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// The base URL is not a URL.
    #[error("Base URL {0:?} is not a valid http(s) URL")]
    BadBaseUrl(String),
}

impl ClientError {
    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A typed client for the control-plane API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: String,
    lease_nonce: Option<String>,
}

impl Client {
    /// A client for `base_url` (e.g. `http://127.0.0.1:4280`) sending `token` as bearer.
    pub fn new(base_url: &str, token: impl Into<String>) -> Result<Client, ClientError> {
        let base = Url::parse(base_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            .ok_or_else(|| ClientError::BadBaseUrl(base_url.to_owned()))?;
        Ok(Client {
            http: reqwest::Client::new(),
            base,
            token: token.into(),
            lease_nonce: None,
        })
    }

    /// The control plane's URL this client talks to.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The bearer token this client sends (the registry takes the same token).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A copy of this client that sends `fly-machine-lease-nonce: nonce` on every request.
    pub fn with_lease_nonce(&self, nonce: impl Into<String>) -> Client {
        Client {
            lease_nonce: Some(nonce.into()),
            ..self.clone()
        }
    }

    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .unwrap_or_else(|()| unreachable!("checked in Client::new"));
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    pub(crate) fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let mut builder = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(nonce) = &self.lease_nonce {
            builder = builder.header(LEASE_NONCE_HEADER, nonce);
        }
        builder
    }

    pub(crate) async fn send(
        &self,
        builder: RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response, ClientError> {
        let response = builder
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.to_string(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| {
                if text.is_empty() {
                    status.to_string()
                } else {
                    text
                }
            });
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut builder = self.request(method, url.clone());
        if let Some(body) = body {
            builder = builder.json(body);
        }
        let response = self.send(builder, &url).await?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.to_string(),
                source,
            })?;
        let bytes: &[u8] = if bytes.is_empty() || status == StatusCode::NO_CONTENT {
            b"null"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map_err(|source| ClientError::Decode {
            url: url.to_string(),
            source,
        })
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, url, None).await
    }

    pub(crate) async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        url: Url,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, url, Some(body)).await
    }

    async fn post_empty<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        self.call::<(), T>(Method::POST, url, None).await
    }

    pub(crate) async fn delete<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        self.call::<(), T>(Method::DELETE, url, None).await
    }

    fn machine_url(&self, app: &str, id: &str, rest: &[&str]) -> Url {
        let mut segments = vec!["v1", "apps", app, "machines", id];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    // Apps.

    /// `POST /v1/apps`.
    pub async fn create_app(&self, req: &CreateAppRequest) -> Result<App, ClientError> {
        self.post(self.url(&["v1", "apps"]), req).await
    }

    /// `GET /v1/apps?org_slug=`.
    pub async fn list_apps(&self, org_slug: Option<&str>) -> Result<ListAppsResponse, ClientError> {
        let mut url = self.url(&["v1", "apps"]);
        if let Some(org) = org_slug {
            url.query_pairs_mut().append_pair("org_slug", org);
        }
        self.get(url).await
    }

    /// `GET /v1/apps/{app}`.
    pub async fn get_app(&self, app: &str) -> Result<App, ClientError> {
        self.get(self.url(&["v1", "apps", app])).await
    }

    /// `DELETE /v1/apps/{app}`.
    pub async fn delete_app(&self, app: &str) -> Result<(), ClientError> {
        self.delete::<serde_json::Value>(self.url(&["v1", "apps", app]))
            .await
            .map(drop)
    }

    // Machines.

    /// `POST /v1/apps/{app}/machines`.
    pub async fn create_machine(
        &self,
        app: &str,
        req: &CreateMachineRequest,
    ) -> Result<Machine, ClientError> {
        self.post(self.url(&["v1", "apps", app, "machines"]), req)
            .await
    }

    /// `GET /v1/apps/{app}/machines` with filters.
    pub async fn list_machines(
        &self,
        app: &str,
        query: &ListMachinesQuery,
    ) -> Result<Vec<Machine>, ClientError> {
        let mut url = self.url(&["v1", "apps", app, "machines"]);
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(region) = &query.region {
                pairs.append_pair("region", region);
            }
            if let Some(state) = &query.state {
                pairs.append_pair("state", state);
            }
            if let Some(deleted) = query.include_deleted {
                pairs.append_pair("include_deleted", if deleted { "true" } else { "false" });
            }
            for (key, value) in &query.metadata {
                pairs.append_pair(&format!("metadata.{key}"), value);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.get(url).await
    }

    /// `GET /v1/apps/{app}/machines/{id}`.
    pub async fn get_machine(&self, app: &str, id: &str) -> Result<Machine, ClientError> {
        self.get(self.machine_url(app, id, &[])).await
    }

    /// `POST /v1/apps/{app}/machines/{id}`: a new config, hence a new version.
    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: &UpdateMachineRequest,
    ) -> Result<Machine, ClientError> {
        self.post(self.machine_url(app, id, &[]), req).await
    }

    /// `DELETE /v1/apps/{app}/machines/{id}?force=`.
    pub async fn delete_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
    ) -> Result<OkResponse, ClientError> {
        let mut url = self.machine_url(app, id, &[]);
        if force {
            url.query_pairs_mut().append_pair("force", "true");
        }
        self.delete(url).await
    }

    /// `POST .../start`.
    pub async fn start_machine(&self, app: &str, id: &str) -> Result<StartResponse, ClientError> {
        self.post_empty(self.machine_url(app, id, &["start"])).await
    }

    /// `POST .../stop`.
    pub async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        req: &StopRequest,
    ) -> Result<OkResponse, ClientError> {
        self.post(self.machine_url(app, id, &["stop"]), req).await
    }

    /// `POST .../restart`.
    pub async fn restart_machine(&self, app: &str, id: &str) -> Result<OkResponse, ClientError> {
        self.post_empty(self.machine_url(app, id, &["restart"]))
            .await
    }

    /// `POST .../signal`.
    pub async fn signal_machine(
        &self,
        app: &str,
        id: &str,
        signal: &str,
    ) -> Result<OkResponse, ClientError> {
        let body = SignalRequest {
            signal: signal.to_owned(),
        };
        self.post(self.machine_url(app, id, &["signal"]), &body)
            .await
    }

    /// `POST .../suspend`.
    pub async fn suspend_machine(&self, app: &str, id: &str) -> Result<OkResponse, ClientError> {
        self.post_empty(self.machine_url(app, id, &["suspend"]))
            .await
    }

    /// `POST .../cordon`.
    pub async fn cordon_machine(&self, app: &str, id: &str) -> Result<OkResponse, ClientError> {
        self.post_empty(self.machine_url(app, id, &["cordon"]))
            .await
    }

    /// `POST .../uncordon`.
    pub async fn uncordon_machine(&self, app: &str, id: &str) -> Result<OkResponse, ClientError> {
        self.post_empty(self.machine_url(app, id, &["uncordon"]))
            .await
    }

    /// `GET .../wait`; a timeout is `ClientError::Api { status: 408, .. }`.
    pub async fn wait_machine(
        &self,
        app: &str,
        id: &str,
        query: &WaitQuery,
    ) -> Result<OkResponse, ClientError> {
        let mut url = self.machine_url(app, id, &["wait"]);
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(state) = &query.state {
                pairs.append_pair("state", state);
            }
            if let Some(timeout) = query.timeout {
                pairs.append_pair("timeout", &timeout.to_string());
            }
            if let Some(instance) = &query.instance_id {
                pairs.append_pair("instance_id", instance);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.get(url).await
    }

    /// `GET .../lease`.
    pub async fn get_lease(&self, app: &str, id: &str) -> Result<LeaseResponse, ClientError> {
        self.get(self.machine_url(app, id, &["lease"])).await
    }

    /// `POST .../lease`.
    pub async fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        req: &CreateLeaseRequest,
    ) -> Result<LeaseResponse, ClientError> {
        self.post(self.machine_url(app, id, &["lease"]), req).await
    }

    /// `DELETE .../lease` with the nonce header.
    pub async fn release_lease(
        &self,
        app: &str,
        id: &str,
        nonce: &str,
    ) -> Result<crate::LeaseReleased, ClientError> {
        self.with_lease_nonce(nonce)
            .delete(self.machine_url(app, id, &["lease"]))
            .await
    }

    /// `GET .../metadata`.
    pub async fn get_metadata(
        &self,
        app: &str,
        id: &str,
    ) -> Result<BTreeMap<String, String>, ClientError> {
        self.get(self.machine_url(app, id, &["metadata"])).await
    }

    /// `POST .../metadata/{key}`.
    pub async fn set_metadata(
        &self,
        app: &str,
        id: &str,
        key: &str,
        value: &str,
    ) -> Result<(), ClientError> {
        let body = MetadataValue {
            value: value.to_owned(),
        };
        self.post::<_, serde_json::Value>(self.machine_url(app, id, &["metadata", key]), &body)
            .await
            .map(drop)
    }

    /// `DELETE .../metadata/{key}`.
    pub async fn delete_metadata(&self, app: &str, id: &str, key: &str) -> Result<(), ClientError> {
        self.delete::<serde_json::Value>(self.machine_url(app, id, &["metadata", key]))
            .await
            .map(drop)
    }

    /// `GET .../metadata/{key}`; a key that is not set is `ClientError::Api { status: 404, .. }`.
    pub async fn get_metadata_key(
        &self,
        app: &str,
        id: &str,
        key: &str,
    ) -> Result<String, ClientError> {
        let value: MetadataValue = self
            .get(self.machine_url(app, id, &["metadata", key]))
            .await?;
        Ok(value.value)
    }

    /// `PUT .../metadata`: sets several keys (`None` removes one).
    pub async fn update_metadata(
        &self,
        app: &str,
        id: &str,
        req: &crate::UpdateMetadataRequest,
    ) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::PUT,
            self.machine_url(app, id, &["metadata"]),
            Some(req),
        )
        .await
        .map(drop)
    }

    /// `GET .../ps`.
    pub async fn machine_processes(
        &self,
        app: &str,
        id: &str,
    ) -> Result<Vec<crate::ProcessStat>, ClientError> {
        self.get(self.machine_url(app, id, &["ps"])).await
    }

    /// `GET .../memory`.
    pub async fn machine_memory(
        &self,
        app: &str,
        id: &str,
    ) -> Result<crate::MemoryResponse, ClientError> {
        self.get(self.machine_url(app, id, &["memory"])).await
    }

    /// `GET /v1/orgs/{org_slug}/machines`.
    pub async fn org_machines(&self, org: &str) -> Result<crate::OrgMachinesResponse, ClientError> {
        self.get(self.url(&["v1", "orgs", org, "machines"])).await
    }

    /// `GET .../events`.
    pub async fn list_events(&self, app: &str, id: &str) -> Result<Vec<MachineEvent>, ClientError> {
        self.get(self.machine_url(app, id, &["events"])).await
    }

    /// `GET .../versions`.
    pub async fn list_versions(
        &self,
        app: &str,
        id: &str,
    ) -> Result<Vec<MachineVersion>, ClientError> {
        self.get(self.machine_url(app, id, &["versions"])).await
    }

    // Tokens and platform.

    /// `POST /v1/tokens` (admin, or an org token for its org's apps).
    pub async fn create_token(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<CreateTokenResponse, ClientError> {
        self.post(self.url(&["v1", "tokens"]), req).await
    }

    /// `GET /v1/tokens`: the tokens this token may see (never their secrets).
    pub async fn list_tokens(&self) -> Result<Vec<crate::TokenInfo>, ClientError> {
        self.get(self.url(&["v1", "tokens"])).await
    }

    /// `DELETE /v1/tokens/{id}`: the token stops working at once.
    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.delete(self.url(&["v1", "tokens", id])).await
    }

    /// `POST /v1/orgs` (admin only).
    pub async fn create_org(
        &self,
        req: &crate::CreateOrgRequest,
    ) -> Result<crate::OrgInfo, ClientError> {
        self.post(self.url(&["v1", "orgs"]), req).await
    }

    /// `GET /v1/orgs`.
    pub async fn list_orgs(&self) -> Result<Vec<crate::OrgInfo>, ClientError> {
        self.get(self.url(&["v1", "orgs"])).await
    }

    /// `DELETE /v1/orgs/{slug}` (admin only; refused while the org has apps).
    pub async fn delete_org(&self, slug: &str) -> Result<(), ClientError> {
        self.delete(self.url(&["v1", "orgs", slug])).await
    }

    /// `GET /v1/platform/regions`.
    pub async fn platform_regions(&self) -> Result<RegionsResponse, ClientError> {
        self.get(self.url(&["v1", "platform", "regions"])).await
    }

    /// `GET /v1/cluster`: the registry's cluster-wide name and the apps' domain.
    pub async fn cluster(&self) -> Result<ClusterInfo, ClientError> {
        self.get(self.url(&["v1", "cluster"])).await
    }

    /// `GET /v1/openapi.json`.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get(self.url(&["v1", "openapi.json"])).await
    }

    // Agent protocol.

    /// `POST /v1/hosts` (a join token for a new host, the host's own credential, or the
    /// admin token): the host, with its credential when this registration issued one.
    pub async fn register_host(
        &self,
        req: &RegisterHostRequest,
    ) -> Result<crate::hosts::EnrolledHost, ClientError> {
        self.post(self.url(&["v1", "hosts"]), req).await
    }

    /// `POST /v1/hosts/join-tokens` (admin).
    pub async fn create_join_token(
        &self,
        req: &crate::hosts::CreateJoinTokenRequest,
    ) -> Result<crate::hosts::JoinToken, ClientError> {
        self.post(self.url(&["v1", "hosts", "join-tokens"]), req)
            .await
    }

    /// `POST /v1/hosts/{id}/revoke` (admin): the host's credential stops working at once.
    pub async fn revoke_host(&self, host_id: &str) -> Result<OkResponse, ClientError> {
        self.post_empty(self.url(&["v1", "hosts", host_id, "revoke"]))
            .await
    }

    /// `POST /v1/hosts/{id}/drain` or `…/undrain` (admin): no new machines on the host, or
    /// new machines again.
    pub async fn drain_host(&self, host_id: &str, drain: bool) -> Result<OkResponse, ClientError> {
        let verb = if drain { "drain" } else { "undrain" };
        self.post_empty(self.url(&["v1", "hosts", host_id, verb]))
            .await
    }

    /// `DELETE /v1/hosts/{id}` (admin): forgets a host that runs no machine.
    pub async fn remove_host(&self, host_id: &str) -> Result<OkResponse, ClientError> {
        self.delete(self.url(&["v1", "hosts", host_id])).await
    }

    /// `GET /v1/hosts` (admin).
    pub async fn list_hosts(&self) -> Result<Vec<Host>, ClientError> {
        self.get(self.url(&["v1", "hosts"])).await
    }

    /// `POST /v1/hosts/{id}/heartbeat`.
    pub async fn heartbeat(&self, host_id: &str) -> Result<Host, ClientError> {
        self.post_empty(self.url(&["v1", "hosts", host_id, "heartbeat"]))
            .await
    }

    /// `POST /v1/hosts/{id}/machines/{machine_id}/status`.
    pub async fn report_status(
        &self,
        host_id: &str,
        machine_id: &str,
        report: &StatusReport,
    ) -> Result<OkResponse, ClientError> {
        self.post(
            self.url(&["v1", "hosts", host_id, "machines", machine_id, "status"]),
            report,
        )
        .await
    }

    /// `GET /v1/hosts/{id}/watch?since=`: every assignment changed after `since`, then live
    /// changes and keep-alives (events without `machine`), until the connection ends.
    pub async fn watch(
        &self,
        host_id: &str,
        since: u64,
    ) -> Result<impl Stream<Item = Result<WatchEvent, ClientError>> + Send + 'static, ClientError>
    {
        let mut url = self.url(&["v1", "hosts", host_id, "watch"]);
        url.query_pairs_mut()
            .append_pair("since", &since.to_string());
        let response = self
            .send(self.request(Method::GET, url.clone()), &url)
            .await?;
        Ok(ndjson_lines(response, url.to_string()))
    }
}

// Mesh, load reports and regional autoscaling.
impl Client {
    /// `GET /v1/mesh/peers` (join or admin token): every registered host with mesh info.
    pub async fn mesh_peers(&self) -> Result<Vec<MeshPeer>, ClientError> {
        self.get(self.url(&["v1", "mesh", "peers"])).await
    }

    /// `POST /v1/hosts/{id}/load` (join or admin token).
    pub async fn report_load(
        &self,
        host_id: &str,
        report: &crate::autoscale::LoadReport,
    ) -> Result<OkResponse, ClientError> {
        self.post(self.url(&["v1", "hosts", host_id, "load"]), report)
            .await
    }

    /// `GET /v1/apps/{app}/autoscale`.
    pub async fn get_autoscale(
        &self,
        app: &str,
    ) -> Result<crate::autoscale::AutoscalePolicy, ClientError> {
        self.get(self.url(&["v1", "apps", app, "autoscale"])).await
    }

    /// `PUT /v1/apps/{app}/autoscale`: replaces the app's whole policy.
    pub async fn set_autoscale(
        &self,
        app: &str,
        policy: &crate::autoscale::AutoscalePolicy,
    ) -> Result<crate::autoscale::AutoscalePolicy, ClientError> {
        self.call(
            Method::PUT,
            self.url(&["v1", "apps", app, "autoscale"]),
            Some(policy),
        )
        .await
    }

    /// `GET /v1/apps/{app}/load`: the app's live load and machines per region.
    pub async fn app_load(
        &self,
        app: &str,
    ) -> Result<crate::autoscale::AppLoadStatus, ClientError> {
        self.get(self.url(&["v1", "apps", app, "load"])).await
    }

    /// `GET /v1/platform/load`: live load and machines per region, summed over the apps the
    /// token can see.
    pub async fn platform_load(&self) -> Result<Vec<crate::autoscale::RegionLoad>, ClientError> {
        self.get(self.url(&["v1", "platform", "load"])).await
    }
}

// Releases and secrets.
impl Client {
    /// `POST /v1/apps/{app}/releases`.
    pub async fn create_release(
        &self,
        app: &str,
        req: &crate::releases::CreateReleaseRequest,
    ) -> Result<crate::releases::Release, ClientError> {
        self.post(self.url(&["v1", "apps", app, "releases"]), req)
            .await
    }

    /// `GET /v1/apps/{app}/releases`, newest first.
    pub async fn list_releases(
        &self,
        app: &str,
    ) -> Result<Vec<crate::releases::Release>, ClientError> {
        self.get(self.url(&["v1", "apps", app, "releases"])).await
    }

    /// `GET /v1/apps/{app}/releases/{version}`.
    pub async fn get_release(
        &self,
        app: &str,
        version: u64,
    ) -> Result<crate::releases::Release, ClientError> {
        let version = version.to_string();
        self.get(self.url(&["v1", "apps", app, "releases", &version]))
            .await
    }

    /// `POST /v1/apps/{app}/releases/{version}/status`.
    pub async fn set_release_status(
        &self,
        app: &str,
        version: u64,
        status: crate::releases::ReleaseStatus,
        reason: Option<&str>,
    ) -> Result<crate::releases::Release, ClientError> {
        let version = version.to_string();
        let body = crate::releases::ReleaseStatusRequest {
            status: status.as_str().to_owned(),
            reason: reason.map(str::to_owned),
        };
        self.post(
            self.url(&["v1", "apps", app, "releases", &version, "status"]),
            &body,
        )
        .await
    }

    /// `GET /v1/apps/{app}/secrets`: names and digests.
    pub async fn list_secrets(
        &self,
        app: &str,
    ) -> Result<Vec<crate::releases::SecretInfo>, ClientError> {
        let all: crate::releases::AppSecrets =
            self.get(self.url(&["v1", "apps", app, "secrets"])).await?;
        Ok(all.secrets)
    }

    /// `POST /v1/apps/{app}/secrets`.
    pub async fn set_secrets(
        &self,
        app: &str,
        values: BTreeMap<String, String>,
    ) -> Result<Vec<crate::releases::SecretInfo>, ClientError> {
        let values = values.into_iter().map(|(k, v)| (k, Some(v))).collect();
        let body = crate::releases::SetSecretsRequest { values };
        let all: crate::releases::AppSecrets = self
            .post(self.url(&["v1", "apps", app, "secrets"]), &body)
            .await?;
        Ok(all.secrets)
    }

    /// `POST /v1/apps/{app}/secrets/unset`.
    pub async fn unset_secrets(
        &self,
        app: &str,
        names: Vec<String>,
    ) -> Result<Vec<crate::releases::SecretInfo>, ClientError> {
        let body = crate::releases::UnsetSecretsRequest { names };
        let all: crate::releases::AppSecrets = self
            .post(self.url(&["v1", "apps", app, "secrets", "unset"]), &body)
            .await?;
        Ok(all.secrets)
    }
}

/// Exec and logs.
impl Client {
    /// `POST /v1/apps/{app}/machines/{id}/exec`.
    pub async fn exec_machine(
        &self,
        app: &str,
        id: &str,
        req: &crate::exec::ExecRequest,
    ) -> Result<crate::exec::ExecResponse, ClientError> {
        self.post(self.machine_url(app, id, &["exec"]), req).await
    }

    /// `GET /v1/apps/{app}/logs`: log lines until the server ends the stream (never, with
    /// `follow`).
    pub async fn app_logs(
        &self,
        app: &str,
        query: &crate::exec::LogsQuery,
    ) -> Result<
        impl Stream<Item = Result<crate::exec::LogEntry, ClientError>> + Send + 'static,
        ClientError,
    > {
        let mut url = self.url(&["v1", "apps", app, "logs"]);
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(region) = &query.region {
                pairs.append_pair("region", region);
            }
            if let Some(machine) = &query.machine {
                pairs.append_pair("machine", machine);
            }
            pairs.append_pair("follow", if query.follow { "true" } else { "false" });
        }
        let response = self
            .send(self.request(Method::GET, url.clone()), &url)
            .await?;
        Ok(ndjson_lines(response, url.to_string()))
    }
}

/// Parses a response body of newline-delimited JSON, one item per non-blank line.
pub fn ndjson_lines<T: DeserializeOwned + Send + 'static>(
    response: reqwest::Response,
    url: String,
) -> impl Stream<Item = Result<T, ClientError>> + Send + 'static {
    let state = (
        response.bytes_stream().boxed(),
        Vec::<u8>::new(),
        url,
        false,
    );
    futures::stream::unfold(state, |(mut body, mut buf, url, done)| async move {
        loop {
            if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let item =
                    serde_json::from_slice::<T>(&line).map_err(|source| ClientError::Decode {
                        url: url.clone(),
                        source,
                    });
                return Some((item, (body, buf, url, done)));
            }
            if done {
                return None;
            }
            match body.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(source)) => {
                    let err = ClientError::Transport {
                        url: url.clone(),
                        source,
                    };
                    return Some((Err(err), (body, Vec::new(), url, true)));
                }
                None => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_a_base_path_and_escape_segments() {
        let client = Client::new("http://127.0.0.1:4280/", "t").unwrap();
        assert_eq!(
            client.url(&["v1", "apps"]).as_str(),
            "http://127.0.0.1:4280/v1/apps"
        );
        let prefixed = Client::new("https://cp.example/api", "t").unwrap();
        assert_eq!(
            prefixed
                .machine_url("web", "m1", &["metadata", "a/b c"])
                .as_str(),
            "https://cp.example/api/v1/apps/web/machines/m1/metadata/a%2Fb%20c"
        );
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for bad in ["", "127.0.0.1:4280", "ftp://x", "mailto:a@b"] {
            assert!(
                matches!(Client::new(bad, "t"), Err(ClientError::BadBaseUrl(_))),
                "{bad:?}"
            );
        }
    }
}
