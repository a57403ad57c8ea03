"""The package lists and repository lines the docker and nvidia_container_toolkit roles render
for each OS family, source and pin, including RHEL/Rocky's dnf spellings, which no test host
here can install. Rendered by Ansible's own templating from the roles' defaults and vars."""

import os

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FILES = ["roles/docker/defaults/main.yml", "roles/docker/vars/main.yml",
         "roles/nvidia_container_toolkit/defaults/main.yml", "roles/nvidia_container_toolkit/vars/main.yml"]
RENDERED = {
    "docker": "_docker_package_specs", "docker_url": "docker_repository_url", "nvidia": "_nvidia_container_toolkit_package_specs",
    "daemon": "_docker_daemon_settings", "nvidia_daemon": "_nvidia_container_toolkit_daemon_settings",
    "list_options": "_nvidia_container_toolkit_list_options",
}


# Each role's list of per-OS vars files (vars/main.yml) and the roles/<role>/vars they are found in,
# loaded in that order when they exist, as tasks/set_vars.yml does.
OS_VARS = [("roles/docker", "_docker_os_vars_files"),
           ("roles/nvidia_container_toolkit", "_nvidia_container_toolkit_os_vars_files")]


def render(facts, **overrides):
    """Template the roles' defaults and vars as Ansible does, for these facts and inventory values."""
    loader = DataLoader()
    variables = {}
    for name in FILES:
        variables.update(loader.load_from_file(os.path.join(ROOT, name), trusted_as_template=True))
    variables.update(overrides, ansible_facts=facts)
    for role, files in OS_VARS:
        for name in Templar(loader=loader, variables=variables).template(variables[files]):
            path = os.path.join(ROOT, role, "vars", name)
            if os.path.isfile(path):
                variables.update(loader.load_from_file(path, trusted_as_template=True))
    variables.update(overrides)
    templar = Templar(loader=loader, variables=variables)
    return {key: templar.template(variables[name]) for key, name in RENDERED.items()}


DEBIAN = {"os_family": "Debian", "distribution": "Debian", "distribution_release": "bookworm"}
UBUNTU = {"os_family": "Debian", "distribution": "Ubuntu", "distribution_release": "noble"}
RHEL = {"os_family": "RedHat", "distribution": "RedHat", "distribution_release": "Plow"}
ROCKY = {"os_family": "RedHat", "distribution": "Rocky", "distribution_release": "Blue Onyx"}


def test_docker_repository_unpinned_on_debian():
    r = render(DEBIAN)
    assert r["docker"] == ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin",
                           "python3-requests"]
    assert r["docker_url"] == "https://download.docker.com/linux/debian"


def test_docker_pinned_on_ubuntu_uses_apt_epoch_and_wildcard():
    r = render(UBUNTU, docker_version="28.5.1")
    assert r["docker"][:2] == ["docker-ce=5:28.5.1*", "docker-ce-cli=5:28.5.1*"]
    assert "containerd.io" in r["docker"]
    assert r["docker_url"] == "https://download.docker.com/linux/ubuntu"


@pytest.mark.parametrize("facts, url", [(RHEL, "https://download.docker.com/linux/rhel"),
                                        (ROCKY, "https://download.docker.com/linux/centos")])
def test_docker_pinned_on_el9_uses_dnf_spelling(facts, url):
    r = render(facts, docker_version="28.5.1")
    assert r["docker"][:2] == ["docker-ce-28.5.1", "docker-ce-cli-28.5.1"]
    assert r["docker_url"] == url


def test_distribution_source_on_ubuntu_has_compose_v2_and_debian_has_none():
    ubuntu = render(UBUNTU, docker_install_source="distribution", docker_version="27.5.1")
    assert ubuntu["docker"] == ["docker.io=27.5.1*", "docker-compose-v2", "python3-requests"]
    debian = render(DEBIAN, docker_install_source="distribution")
    assert debian["docker"] == ["docker.io", "python3-requests"]


def test_toolkit_pins_all_four_packages_together():
    apt = render(UBUNTU, nvidia_container_toolkit_version="1.18.0")["nvidia"]
    assert apt == ["nvidia-container-toolkit=1.18.0-1", "nvidia-container-toolkit-base=1.18.0-1",
                   "libnvidia-container-tools=1.18.0-1", "libnvidia-container1=1.18.0-1"]
    dnf = render(ROCKY, nvidia_container_toolkit_version="1.18.0-1")["nvidia"]
    assert dnf[0] == "nvidia-container-toolkit-1.18.0-1"
    assert render(DEBIAN)["nvidia"][0] == "nvidia-container-toolkit"


def test_unset_daemon_variables_leave_their_keys_alone():
    daemon = render(DEBIAN)["daemon"]
    assert daemon == {"live-restore": True, "log-driver": "json-file", "log-opts": {"max-size": "100m", "max-file": "3"}}
    daemon = render(DEBIAN, docker_registry_mirrors=[], docker_insecure_registries=["10.0.0.5:5000"],
                    docker_data_root="/data/docker", docker_log_driver="")["daemon"]
    assert daemon == {"live-restore": True, "registry-mirrors": [], "insecure-registries": ["10.0.0.5:5000"],
                      "data-root": "/data/docker"}


def test_nvidia_runtime_and_workaround_settings():
    r = render(DEBIAN, nvidia_container_toolkit_default_runtime=True)
    assert r["nvidia_daemon"] == {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}},
                                  "default-runtime": "nvidia"}
    assert r["list_options"] == {"exec-opts": ["native.cgroupdriver=cgroupfs"]}
    r = render(DEBIAN, nvidia_container_toolkit_cgroupfs_driver=False, nvidia_container_toolkit_docker_runtime=False)
    assert r["nvidia_daemon"] == {} and r["list_options"] == {}


# Galaxy's platform names and the vars file (os_family or distribution) that supports each.
PLATFORM_FILES = {"Debian": "Debian.yml", "Ubuntu": "Ubuntu.yml", "EL": "RedHat.yml"}


@pytest.mark.parametrize("role", ["docker", "nvidia_container_toolkit"])
def test_meta_platforms_are_the_ones_with_variables(role):
    import yaml

    with open(os.path.join(ROOT, "roles", role, "meta", "main.yml")) as f:
        platforms = [p["name"] for p in yaml.safe_load(f)["galaxy_info"]["platforms"]]
    assert sorted(platforms) == sorted(PLATFORM_FILES)
    for name in platforms:
        family = PLATFORM_FILES[name] if role == "docker" else {"Ubuntu": "Debian.yml"}.get(name, PLATFORM_FILES[name])
        assert os.path.isfile(os.path.join(ROOT, "roles", role, "vars", family)), (role, name)


def test_an_os_without_variables_has_no_package_manager():
    loader = DataLoader()
    variables = loader.load_from_file(os.path.join(ROOT, "roles/docker/vars/main.yml"), trusted_as_template=True)
    variables["ansible_facts"] = {"os_family": "Suse", "distribution": "openSUSE Leap", "distribution_major_version": "15"}
    names = Templar(loader=loader, variables=variables).template(variables["_docker_os_vars_files"])
    assert names == ["Suse.yml", "openSUSE Leap.yml", "openSUSE Leap_15.yml"]
    assert not any(os.path.isfile(os.path.join(ROOT, "roles/docker/vars", n)) for n in names)
