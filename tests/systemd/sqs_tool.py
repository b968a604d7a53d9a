"""SQS from inside the container (/opt/sqsd-test/sqs_tool.py, run with the venv's python):
the test's moto server on 127.0.0.1:4566.

    sqs_tool.py wait                       until the endpoint answers (moto-sqs.service)
    sqs_tool.py send QUEUE BODY...         one message per BODY
    sqs_tool.py counts QUEUE               {"visible": N, "in_flight": N}
"""

import json
import socket
import sys
import time

ENDPOINT = "http://127.0.0.1:4566"


def client():
    import boto3

    return boto3.client("sqs", endpoint_url=ENDPOINT, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def main(command: str, *args: str) -> None:
    if command == "wait":
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", 4566), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    sqs = client()
    url = sqs.get_queue_url(QueueName=args[0])["QueueUrl"]
    if command == "send":
        for body in args[1:]:
            sqs.send_message(QueueUrl=url, MessageBody=body)
    elif command == "counts":
        attributes = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                          "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        print(json.dumps({"visible": int(attributes["ApproximateNumberOfMessages"]),
                          "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"])}))
    else:
        sys.exit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
