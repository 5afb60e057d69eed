//! The agents the benchmarks serve in their own process, over a real
//! Unix-socket gRPC server: only what each benchmark needs of the
//! Observer API.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weir_flows::store::FlowStore;
use weir_proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse,
    ServerStatusRequest, ServerStatusResponse, get_flows_response::ResponseTypes,
};

#[derive(Clone)]
pub enum BenchAgent {
    /// The agent's GetFlows as it was before flows were encoded once:
    /// every read copies the flow into a fresh response, which tonic then
    /// encodes for that client. Only the baseline the shared encoding is
    /// measured against, in the same run (`--flows-grpc`).
    CopyPerRead { store: Arc<FlowStore>, node: String },
    /// Streams 1,000 flows a second, between 200 workloads in 10
    /// namespaces, to whoever follows (`--ui`).
    Ticker,
}

fn ticker_flow(i: u64) -> weir_proto::flow::Flow {
    use weir_proto::flow::{Endpoint, Flow, Ip, Layer4, Tcp, Verdict, Workload, layer4::Protocol};
    let a = i % 200;
    let b = (a + 1 + (i / 200) % 10 * 7) % 200;
    let ep = |w: u64| Endpoint {
        namespace: format!("ns-{}", w % 10),
        pod_name: format!("app-{w}-0"),
        workloads: vec![Workload {
            name: format!("app-{w}"),
            kind: "Deployment".into(),
        }],
        identity: 300 + w as u32,
        ..Default::default()
    };
    Flow {
        time: Some(weir_proto::time::to_timestamp(std::time::SystemTime::now())),
        node_name: "node0".into(),
        verdict: Verdict::Forwarded as i32,
        is_reply: Some(false),
        ip: Some(Ip {
            source: format!("10.244.{}.{}", a / 100, a % 100 + 1),
            destination: format!("10.244.{}.{}", 2 + b / 100, b % 100 + 1),
            ..Default::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(Protocol::Tcp(Tcp {
                source_port: 10000 + (i % 50000) as u32,
                destination_port: 8080,
                ..Default::default()
            })),
        }),
        source: Some(ep(a)),
        destination: Some(ep(b)),
        weir: Some(weir_proto::weir::flow::v1::FlowDetails {
            event: "flow-start".into(),
            bytes: 74,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl weir_proto::observer::observer_server::Observer for BenchAgent {
    type GetFlowsStream = ReceiverStream<Result<GetFlowsResponse, Status>>;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        match self.clone() {
            BenchAgent::CopyPerRead { store, node } => {
                let number = request.get_ref().number as usize;
                let stored = store.snapshot();
                let past: Vec<_> = stored[stored.len().saturating_sub(number)..].to_vec();
                tokio::spawn(async move {
                    for r in past {
                        let f = (**r.flow()).clone();
                        let msg = GetFlowsResponse {
                            time: f.time,
                            node_name: node.clone(),
                            response_types: Some(ResponseTypes::Flow(f)),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                });
            }
            BenchAgent::Ticker if request.get_ref().follow => {
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(Duration::from_millis(10));
                    let mut i = 0u64;
                    loop {
                        every.tick().await;
                        for _ in 0..10 {
                            let f = ticker_flow(i);
                            i += 1;
                            let r = GetFlowsResponse {
                                time: f.time,
                                node_name: "node0".into(),
                                response_types: Some(ResponseTypes::Flow(f)),
                            };
                            if tx.send(Ok(r)).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
            BenchAgent::Ticker => {}
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        Err(Status::unimplemented("a benchmark's agent"))
    }

    async fn get_namespaces(
        &self,
        _: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        Err(Status::unimplemented("a benchmark's agent"))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
}
