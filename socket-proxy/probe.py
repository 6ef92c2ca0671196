"""What the socket proxy lets a balancer do: run inside the balancer's container.

    docker exec <balancer container> python -c "$(cat socket-proxy/probe.py)" <a container
        that is not the pool's>

Sends the Engine API, through the proxy the balancer uses (LBPROXY_DOCKER_URL), one call it
makes (a list) and calls it must never be able to make, and prints each answer's HTTP status
as JSON: 200 for the list, 403 for the rest. The tests (test_docker_e2e.py,
test_swarm_e2e.py) run it in the deployed stacks.
"""

import json
import os
import sys
import urllib.error
import urllib.request

base = os.environ["LBPROXY_DOCKER_URL"].replace("tcp://", "http://") + "/v1.41"
pool = os.environ["LBPROXY_POOL"]
label = {"lbproxy.control.pool": pool, "lbproxy.role": "replica"}


def status(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


image = "lbproxy-server:latest"


def service(**container):
    return {
        "Name": pool + "_probe",
        "Labels": label,
        "TaskTemplate": {"ContainerSpec": {"Image": image, **container}},
    }


print(
    json.dumps(
        {
            "list containers": status("GET", "/containers/json"),
            "privileged container": status(
                "POST",
                "/containers/create?name=" + pool + "_probe",
                {"Image": image, "Labels": label, "HostConfig": {"Privileged": True}},
            ),
            "bind-mount service": status(
                "POST",
                "/services/create",
                service(Mounts=[{"Type": "bind", "Source": "/", "Target": "/host"}]),
            ),
            "service named outside the pool": status(
                "POST",
                "/services/create",
                {**service(), "Name": "lbproxy-probe-foreign"},
            ),
            "unlabelled service": status(
                "POST",
                "/services/create",
                {"Name": pool + "_probe", "TaskTemplate": {"ContainerSpec": {"Image": image}}},
            ),
            "stop a foreign container": status("POST", "/containers/" + sys.argv[1] + "/stop"),
            "remove the socket proxy": status("DELETE", "/services/" + pool + "_socket-proxy"),
            "leave the swarm": status("POST", "/swarm/leave?force=true"),
        }
    )
)
