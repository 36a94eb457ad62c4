//! Several targets acting as one: stats add up, a broadcast reaches every process's sockets.

use punisher_target::{TargetConfig, spawn_local_cluster};

use crate::util::{http, polling_socket, raw};

#[tokio::test]
async fn three_processes_act_as_one() {
    let cluster = spawn_local_cluster(TargetConfig::new(), 3).await.unwrap();
    for t in &cluster {
        let (status, _) = http(t.addr, "POST", "/login", r#"{"guest":true}"#).await;
        assert_eq!(status, 200);
    }
    let mut sids = Vec::new();
    for t in &cluster {
        sids.push(polling_socket(t.addr).await);
    }

    let (status, stats) = http(cluster[1].addr, "GET", "/admin/stats", "").await;
    assert_eq!(status, 200);
    assert_eq!(stats["logins"]["guest"], 3);
    assert_eq!(stats["processes"], 3);
    assert_eq!(stats["sockets"]["connected_now"]["polling"], 3);

    let (status, b) = http(
        cluster[2].addr,
        "POST",
        "/admin/broadcast",
        r#"{"question":7}"#,
    )
    .await;
    assert_eq!(
        (status, b["id"].as_u64(), b["sockets"].as_u64()),
        (200, Some(1), Some(3))
    );
    for (t, sid) in cluster.iter().zip(&sids) {
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        let payload = raw(t.addr, "GET", &path, "").await;
        assert!(payload.contains(r#"42["question",{"id":1,"#), "{payload}");
        assert!(payload.contains(r#""question":7"#), "{payload}");
    }
    let (_, stats) = http(cluster[0].addr, "GET", "/admin/stats", "").await;
    assert_eq!(
        (
            stats["broadcasts"].as_u64(),
            stats["questions_delivered"].as_u64()
        ),
        (Some(1), Some(3))
    );

    // Ids keep increasing whichever process originates the next broadcast.
    let (_, b) = http(cluster[0].addr, "POST", "/admin/broadcast", "").await;
    assert_eq!(b["id"], 2);

    let (status, _) = http(cluster[0].addr, "POST", "/admin/reset", "").await;
    assert_eq!(status, 200);
    for t in &cluster {
        let s = t.stats();
        assert_eq!(
            (s.logins.guest, s.broadcasts, s.questions_delivered),
            (0, 0, 0)
        );
    }
    for t in cluster {
        t.shutdown().await.unwrap();
    }
}
