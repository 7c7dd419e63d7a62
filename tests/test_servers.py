"""The test servers themselves work: a bucket round trip, and SeaweedFS checks signatures."""

import pytest
from botocore.exceptions import ClientError

from servers import boto3_client


@pytest.fixture(params=["seaweed", "moto_server"])
def server(request):
    return request.getfixturevalue(request.param)


def test_bucket_roundtrip(server, bucket_name):
    s3 = boto3_client(server)
    s3.create_bucket(Bucket=bucket_name)
    s3.put_object(Bucket=bucket_name, Key="a/b.txt", Body=b"hello")
    assert s3.get_object(Bucket=bucket_name, Key="a/b.txt")["Body"].read() == b"hello"
    assert server.endpoint.startswith("http://127.0.0.1:")


def test_seaweed_rejects_wrong_secret(seaweed, bucket_name):
    boto3_client(seaweed).create_bucket(Bucket=bucket_name)
    forged = boto3_client(seaweed, aws_secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as exc:
        forged.put_object(Bucket=bucket_name, Key="x", Body=b"x")
    error = exc.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "SignatureDoesNotMatch"


def test_seaweed_conditional_create(seaweed, bucket_name):
    s3 = boto3_client(seaweed)
    s3.create_bucket(Bucket=bucket_name)
    s3.put_object(Bucket=bucket_name, Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket_name, Key="k", Body=b"2", IfNoneMatch="*")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
