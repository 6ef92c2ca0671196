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

proxy = os.environ["LBPROXY_DOCKER_URL"].replace("tcp://", "http://")
base = proxy + "/v1.41"
pool = os.environ["LBPROXY_POOL"]
label = {"lbproxy.control.pool": pool, "lbproxy.role": "replica"}
# the network the proxy lets a container join (Compose passes it; stack.yaml the default)
network = os.environ.get("LBPROXY_DOCKER_NETWORK", "lbproxy-net")


def status(method, path, body=None, api=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        (api or base) + path, data=data, method=method, headers={"Content-Type": "application/json"}
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


def container(**host_config):
    """A container the proxy would let through (the pool's name, label and network) but
    for ``host_config``'s additions."""
    return {"Image": image, "Labels": label, "HostConfig": {"NetworkMode": network, **host_config}}


published = {"5000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "15999"}]}
secret = {"SecretName": pool + "_admin_token", "SecretID": "x", "File": {"Name": "t"}}


print(
    json.dumps(
        {
            "list containers": status("GET", "/containers/json"),
            "privileged container": status(
                "POST",
                "/containers/create?name=" + pool + "_probe",
                container(Privileged=True),
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
            "container publishing a host port": status(
                "POST",
                "/containers/create?name=" + pool + "_probe",
                container(PortBindings=published),
            ),
            "container with its own DNS server": status(
                "POST",
                "/containers/create?name=" + pool + "_probe",
                container(Dns=["203.0.113.53"]),
            ),
            "start with a host config (API 1.23)": status(
                "POST",
                "/containers/" + pool + "_probe/start",
                {"Privileged": True},
                proxy + "/v1.23",
            ),
            "service publishing a port": status(
                "POST",
                "/services/create",
                {
                    **service(),
                    "EndpointSpec": {"Ports": [{"TargetPort": 5000, "PublishedPort": 15999}]},
                },
            ),
            "service reading a secret": status(
                "POST", "/services/create", service(Secrets=[secret])
            ),
            "stop a foreign container": status("POST", "/containers/" + sys.argv[1] + "/stop"),
            "remove the socket proxy": status("DELETE", "/services/" + pool + "_socket-proxy"),
            "leave the swarm": status("POST", "/swarm/leave?force=true"),
        }
    )
)
