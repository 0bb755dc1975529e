"""One run per s3:// output prefix, across machines (``tasks.s3_lock``), on a real
S3-compatible server: a second holder is refused, a dead holder's lock expires, a live
holder's heartbeat keeps it, and a holder that lost its lock never deletes the new
one."""

from __future__ import annotations

import json
import time

import pytest

from tasks.out_lock import LockOwner
from tasks.s3_lock import PrefixLocked, hold_prefix_lock

BUCKET = "locks"
KEY = "run/.autolabel.lock"
DESTINATION = f"s3://{BUCKET}/run"


@pytest.fixture
def client(s3_test_client):
    client = s3_test_client
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    client.delete_object(Bucket=BUCKET, Key=KEY)
    return client


def _holder(client) -> dict:
    return json.loads(client.get_object(Bucket=BUCKET, Key=KEY)["Body"].read())


def _exists(client) -> bool:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=KEY).get("Contents", [])
    return len(listed) == 1


def test_a_second_run_is_refused_while_the_first_holds_the_prefix(client):
    with hold_prefix_lock(DESTINATION, "autolabel label", client=client):
        assert _holder(client)["what"] == "autolabel label"
        with (
            pytest.raises(PrefixLocked) as refused,
            hold_prefix_lock(DESTINATION, "autolabel run", client=client),
        ):
            pass
    message = str(refused.value)
    assert message.startswith(f"{DESTINATION} is being written by 'autolabel label'")
    assert "\n" not in message and "expires in" in message
    assert not _exists(client)  # released
    with hold_prefix_lock(DESTINATION, "autolabel run", client=client):
        assert _holder(client)["what"] == "autolabel run"


def test_a_dead_runs_lock_expires_and_is_taken_over(client):
    dead = LockOwner(
        pid=4242, host="gpu-7", since="2026-12-01T00:00:00+00:00", what="x"
    )
    client.put_object(Bucket=BUCKET, Key=KEY, Body=json.dumps(dead.__dict__).encode())
    with (
        pytest.raises(PrefixLocked, match="pid 4242 on host gpu-7"),
        hold_prefix_lock(DESTINATION, "autolabel run", client=client, stale_after_s=30),
    ):
        pass
    time.sleep(2.2)  # S3 times have 1 s resolution
    with hold_prefix_lock(DESTINATION, "autolabel run", client=client, stale_after_s=1):
        assert _holder(client)["what"] == "autolabel run"
    assert not _exists(client)


def test_the_heartbeat_keeps_a_live_runs_lock_from_expiring(client):
    with hold_prefix_lock(
        DESTINATION, "long run", client=client, heartbeat_s=3600
    ) as lock:
        time.sleep(2.2)  # the lock is now older than the contender's stale_after_s
        lock.refresh()  # one heartbeat (the thread's would come after an hour)
        with (
            pytest.raises(PrefixLocked),
            hold_prefix_lock(
                DESTINATION, "contender", client=client, stale_after_s=1.5
            ),
        ):
            pass
        assert _holder(client)["what"] == "long run"
        assert _holder(client)["beat"] == 2  # created, then one heartbeat


def test_a_run_that_lost_its_lock_says_so_and_leaves_the_new_holders_lock(client):
    with (
        pytest.raises(PrefixLocked, match="took over this run's lock"),
        hold_prefix_lock(
            DESTINATION, "slow run", client=client, heartbeat_s=3600
        ) as lock,
    ):
        newer = LockOwner(pid=7, host="gpu-2", since="now", what="new holder")
        client.put_object(
            Bucket=BUCKET, Key=KEY, Body=json.dumps(newer.__dict__).encode()
        )
        lock.refresh()  # finds the ETag changed: taken over
        assert lock.lost
    assert _exists(client)
    assert _holder(client)["what"] == "new holder"


def test_an_unreachable_store_does_not_stop_the_heartbeat(client):
    from botocore.exceptions import EndpointConnectionError

    with hold_prefix_lock(DESTINATION, "run", client=client, heartbeat_s=3600) as lock:
        real_put = client.put_object
        client.put_object = lambda **_: (_ for _ in ()).throw(
            EndpointConnectionError(endpoint_url="http://s3")
        )
        lock.refresh()  # logged, not raised, not counted as lost
        client.put_object = real_put
        lock.refresh()
        assert not lock.lost and _holder(client)["beat"] == 3
    assert not _exists(client)
