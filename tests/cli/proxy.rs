//! A proxy in front of the server that makes one concurrent change: the first time it
//! sees a client's PUT of an agent, it publishes another version of that agent itself
//! (with an API key, as another writer would), then passes the client's PUT on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{Body, Request, Response};

pub struct Proxy {
    pub url: String,
    raced: Arc<AtomicBool>,
    _runtime: std::thread::JoinHandle<()>,
}

impl Proxy {
    pub fn start(upstream: &str, key: String, concurrent_manifest: String) -> Self {
        let upstream = upstream.to_owned();
        let raced = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&raced);
        let (send, receive) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind");
                let port = acceptor.local_addr()[0].as_socket_addr().expect("tcp").port();
                send.send(port).expect("the port");
                let client = reqwest::Client::new();
                let endpoint = poem::endpoint::make(move |request: Request| {
                    let (client, upstream, key, manifest, flag) =
                        (client.clone(), upstream.clone(), key.clone(), concurrent_manifest.clone(), Arc::clone(&flag));
                    async move { forward(request, &client, &upstream, &key, &manifest, &flag).await }
                });
                let _ = poem::Server::new_with_acceptor(acceptor).run(endpoint).await;
            });
        });
        let port = receive.recv().expect("the proxy listens");
        Self { url: format!("http://127.0.0.1:{port}"), raced, _runtime: thread }
    }

    /// Whether the concurrent change was made.
    pub fn raced(&self) -> bool {
        self.raced.load(Ordering::SeqCst)
    }
}

async fn forward(request: Request, client: &reqwest::Client, upstream: &str, key: &str, manifest: &str, raced: &AtomicBool) -> Response {
    let path = request.uri().path_and_query().map_or("/", |path| path.as_str()).to_owned();
    if request.method() == poem::http::Method::PUT && path.starts_with("/api/v1/agents/") && !raced.swap(true, Ordering::SeqCst) {
        let answer = client
            .put(format!("{upstream}{path}"))
            .header("x-api-key", key)
            .header("content-type", "application/yaml")
            .body(manifest.to_owned())
            .send()
            .await
            .expect("the concurrent change is sent");
        assert_eq!(answer.status().as_u16(), 200, "the concurrent change is made");
    }
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes()).expect("a method");
    let mut outgoing = client.request(method, format!("{upstream}{path}"));
    for (name, value) in request.headers() {
        if name != "host" && name != "content-length" {
            outgoing = outgoing.header(name.as_str(), value.as_bytes());
        }
    }
    let body = request.into_body().into_bytes().await.expect("the request's body");
    let answer = outgoing.body(body.to_vec()).send().await.expect("the server answers");
    let mut response = Response::builder().status(poem::http::StatusCode::from_u16(answer.status().as_u16()).expect("a status"));
    for (name, value) in answer.headers() {
        if name != "transfer-encoding" && name != "content-length" {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    response.body(Body::from(answer.bytes().await.expect("the answer's body").to_vec()))
}
