"""SQS limits, batch entries, attribute encoding and error classification."""

from botocore.exceptions import ClientError, NoCredentialsError

from sqsd import config, sqs


def test_batches_are_chunks_of_ten_whose_ids_map_back_to_the_chunk():
    handles = [f"h{i}" for i in range(23)]
    chunks = list(sqs.batches(handles, lambda h: {"ReceiptHandle": h}))
    assert [len(chunk) for chunk, _ in chunks] == [10, 10, 3]
    chunk, entries = chunks[1]
    assert entries[0] == {"Id": "0", "ReceiptHandle": "h10"}
    assert [chunk[int(e["Id"])] for e in entries] == [e["ReceiptHandle"] for e in entries]
    assert list(sqs.batches([], lambda h: {})) == []


def test_attributes_are_encoded_by_type():
    assert sqs.encode_attributes({"s": "x", "n": 3, "f": 1.5, "b": b"\0", "t": True}) == {
        "s": {"DataType": "String", "StringValue": "x"},
        "n": {"DataType": "Number", "StringValue": "3"},
        "f": {"DataType": "Number", "StringValue": "1.5"},
        "b": {"DataType": "Binary", "BinaryValue": b"\0"},
        "t": {"DataType": "String", "StringValue": "True"},
    }


def test_max_delay_is_sqs_limit_unless_tests_lower_it(monkeypatch):
    monkeypatch.delenv("SQSD_MAX_SQS_DELAY", raising=False)
    assert sqs.max_delay() == sqs.MAX_DELAY == 900
    monkeypatch.setenv("SQSD_MAX_SQS_DELAY", "3")
    assert sqs.max_delay() == 3


def test_config_limits_are_sqs_limits():
    assert config.QUEUE_KEYS["batch_size"].expected == f"an integer from 1 to {sqs.MAX_BATCH}"
    assert config.QUEUE_KEYS["wait_time_seconds"].expected == f"an integer from 0 to {sqs.MAX_WAIT}"
    assert str(sqs.MAX_VISIBILITY) in config.QUEUE_KEYS["visibility_timeout"].expected


def test_errors_are_described_for_people():
    missing = ClientError({"Error": {"Code": "QueueDoesNotExist"}}, "GetQueueUrl")
    legacy = ClientError(
        {"Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue"}}, "GetQueueUrl"
    )
    assert sqs.is_missing_queue(missing) and sqs.is_missing_queue(legacy)
    assert sqs.describe_error(missing) == "queue does not exist"
    assert sqs.describe_error(NoCredentialsError()).startswith("no AWS credentials found")
    assert sqs.describe_error(ValueError("x")) == "ValueError: x"
    assert sqs.error_code(ConnectionError()) == ""
