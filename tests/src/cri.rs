//! A test's own CRI client (what the kubelet does, reduced to one pod): run a pod sandbox, create
//! and start a container in it, remove the pod. gRPC on the runtime's unix socket by tonic, the
//! `runtime.v1` messages with the fields a host-network pod needs (tags from k8s.io/cri-api
//! `api.proto`). tracer itself only ever lists; these calls are the test's side.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
}

/// NamespaceMode: POD = 0, CONTAINER = 1, NODE = 2.
const NODE: i32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
pub struct NamespaceOption {
    #[prost(int32, tag = "1")]
    pub network: i32,
    #[prost(int32, tag = "2")]
    pub pid: i32,
    #[prost(int32, tag = "3")]
    pub ipc: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxSandboxSecurityContext {
    #[prost(message, optional, tag = "1")]
    pub namespace_options: Option<NamespaceOption>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandboxConfig {
    #[prost(string, tag = "1")]
    pub cgroup_parent: String,
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxSandboxSecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    pub hostname: String,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxResponse {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageSpec {
    #[prost(string, tag = "1")]
    pub image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerSecurityContext {
    #[prost(message, optional, tag = "3")]
    pub namespace_options: Option<NamespaceOption>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerConfig {
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxContainerSecurityContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "2")]
    pub image: Option<ImageSpec>,
    #[prost(string, repeated, tag = "3")]
    pub command: Vec<String>,
    #[prost(message, optional, tag = "15")]
    pub linux: Option<LinuxContainerConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(message, optional, tag = "2")]
    pub config: Option<ContainerConfig>,
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerResponse {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

/// Start/StopPodSandbox/RemovePodSandbox/StartContainer all take one id in tag 1.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ById {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// A pod with one container, on the host's network.
pub struct Pod {
    pub sandbox_id: String,
    pub container_id: String,
}

/// Runs pod NAMESPACE/NAME (UID `uid`, best-effort QoS under the kubelet's cgroupfs layout)
/// with one container `container` running `command` from `image`.
pub fn run_pod(
    socket: &Path,
    (namespace, name, uid): (&str, &str, &str),
    container: &str,
    image: &str,
    command: &[&str],
) -> Result<Pod, String> {
    let host_network = NamespaceOption {
        network: NODE,
        pid: 0,
        ipc: 0,
    };
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        // A pod on the host's network has the host's name (the kubelet sends none).
        hostname: String::new(),
        labels: HashMap::new(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(host_network.clone()),
            }),
        }),
    };
    block_on(socket, |mut c| async move {
        let sandbox: RunPodSandboxResponse = c
            .call(
                "RunPodSandbox",
                RunPodSandboxRequest {
                    config: Some(sandbox_config.clone()),
                },
            )
            .await?;
        let id = sandbox.pod_sandbox_id.clone();
        let started = start_container(
            &mut c,
            sandbox,
            sandbox_config,
            container,
            image,
            command,
            host_network,
        )
        .await;
        if started.is_err() {
            // The sandbox must not outlive a failed start (its shim and process would).
            let _: Result<Empty, _> = c.call("StopPodSandbox", ById { id: id.clone() }).await;
            let _: Result<Empty, _> = c.call("RemovePodSandbox", ById { id }).await;
        }
        started
    })
}

async fn start_container(
    c: &mut Client,
    sandbox: RunPodSandboxResponse,
    sandbox_config: PodSandboxConfig,
    container: &str,
    image: &str,
    command: &[&str],
    host_network: NamespaceOption,
) -> Result<Pod, String> {
    {
        let created: CreateContainerResponse = c
            .call(
                "CreateContainer",
                CreateContainerRequest {
                    pod_sandbox_id: sandbox.pod_sandbox_id.clone(),
                    config: Some(ContainerConfig {
                        metadata: Some(ContainerMetadata {
                            name: container.into(),
                            attempt: 0,
                        }),
                        image: Some(ImageSpec {
                            image: image.into(),
                        }),
                        command: command.iter().map(|s| s.to_string()).collect(),
                        linux: Some(LinuxContainerConfig {
                            security_context: Some(LinuxContainerSecurityContext {
                                namespace_options: Some(host_network),
                            }),
                        }),
                    }),
                    sandbox_config: Some(sandbox_config),
                },
            )
            .await?;
        let _: Empty = c
            .call(
                "StartContainer",
                ById {
                    id: created.container_id.clone(),
                },
            )
            .await?;
        Ok(Pod {
            sandbox_id: sandbox.pod_sandbox_id,
            container_id: created.container_id,
        })
    }
}

/// Stops and removes a pod sandbox (and its containers).
pub fn remove_pod(socket: &Path, sandbox_id: &str) -> Result<(), String> {
    let id = sandbox_id.to_string();
    block_on(socket, |mut c| async move {
        let _: Empty = c.call("StopPodSandbox", ById { id: id.clone() }).await?;
        let _: Empty = c.call("RemovePodSandbox", ById { id }).await?;
        Ok(())
    })
}

struct Client {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl Client {
    async fn call<Q, A>(&mut self, method: &str, request: Q) -> Result<A, String>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let path = hyper::http::uri::PathAndQuery::try_from(format!(
            "/runtime.v1.RuntimeService/{method}"
        ))
        .map_err(|e| e.to_string())?;
        self.grpc.ready().await.map_err(|e| e.to_string())?;
        self.grpc
            .unary(
                tonic::Request::new(request),
                path,
                tonic_prost::ProstCodec::<Q, A>::default(),
            )
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{method}: {:?} {}", s.code(), s.message()))
    }
}

fn block_on<T, F: std::future::Future<Output = Result<T, String>>>(
    socket: &Path,
    calls: impl FnOnce(Client) -> F,
) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let socket: PathBuf = socket.to_path_buf();
    // A runtime that stops answering fails the test instead of hanging it.
    let work = async move {
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| e.to_string())?;
        calls(Client {
            grpc: tonic::client::Grpc::new(channel),
        })
        .await
    };
    runtime.block_on(async move {
        tokio::time::timeout(std::time::Duration::from_secs(60), work)
            .await
            .map_err(|_| "the CRI runtime did not answer in 60 s".to_string())?
    })
}
