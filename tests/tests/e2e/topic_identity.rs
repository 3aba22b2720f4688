//! A deleted topic never comes back: a leftover directory of a delete that crashed before
//! removing it is never reopened, whether the topic is recreated or the broker restarts.

use std::path::Path;

use sluice_tests::TestBroker;

use crate::{client_with_topic, high_watermark, runtime};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("ls") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn a_deleted_topic_s_leftover_directory_is_never_reopened() {
    let mut broker = TestBroker::start();
    let leftover = tempfile::tempdir().expect("tempdir");
    let partition_dir = broker.data_dir().join("phoenix").join("0");
    let rt = runtime();
    rt.block_on(async {
        let client = client_with_topic(&broker.address, "phoenix", 1, &[]).await;
        super::produce_values(&client, "phoenix", "old", 5).await;
        assert_eq!(high_watermark(&client, "phoenix", 0).await, 5);
        // What a crash between the controller's delete and the directory's removal leaves.
        copy_dir(&partition_dir, leftover.path());
        client
            .admin()
            .delete_topic("phoenix")
            .await
            .expect("delete");
        // The broker removes the directory once it has applied the delete (bounded wait).
        for _ in 0..100 {
            if !partition_dir.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(!partition_dir.exists(), "the delete removed the directory");
        copy_dir(leftover.path(), &partition_dir);
        // Recreated while the leftover is there: the new partition starts empty.
        client
            .admin()
            .create_topic("phoenix", 1, 1, Default::default())
            .await
            .expect("recreate");
        assert_eq!(high_watermark(&client, "phoenix", 0).await, 0);
        super::produce_values(&client, "phoenix", "old", 2).await;
        assert_eq!(high_watermark(&client, "phoenix", 0).await, 2);
        client
            .admin()
            .delete_topic("phoenix")
            .await
            .expect("delete again");
    });
    assert!(broker.stop());
    // A leftover of a deleted topic found at start-up is swept.
    copy_dir(leftover.path(), &partition_dir);
    broker.restart();
    assert!(!partition_dir.exists(), "swept at start-up");
    rt.block_on(async {
        let client = client_with_topic(&broker.address, "phoenix", 1, &[]).await;
        assert_eq!(high_watermark(&client, "phoenix", 0).await, 0);
    });
}
