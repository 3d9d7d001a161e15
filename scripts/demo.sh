#!/usr/bin/env bash
# Start a local Debian container as the default target, converge
# playbooks/site.yml onto it and print how to log in.
#   scripts/demo.sh            set up (first run: a few minutes) and converge
#   scripts/demo.sh down       remove the demo container and its files
# Environment: HM_DEMO_SSH_PORT (default 2222), HM_DEMO_PLATFORM (debian12|debian13).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"

name=hm-demo
platform=${HM_DEMO_PLATFORM:-debian12}
ssh_port=${HM_DEMO_SSH_PORT:-2222}
demo_dir="$HM_CACHE_DIR/demo"
secrets_dir="$demo_dir/secrets"

if [ "${1:-up}" = down ]; then
    podman rm -f "$name" >/dev/null 2>&1 || true
    podman network rm "$name" >/dev/null 2>&1 || true
    rm -rf "$demo_dir"
    echo "demo removed"
    exit 0
fi

"$here/setup.sh"
mkdir -p "$demo_dir" && chmod 0700 "$demo_dir"

if ! podman container exists "$name"; then
    podman network exists "$name" || podman network create "$name" >/dev/null
    podman run -d --name "$name" --hostname mail.example.test --network "$name" \
        -p "127.0.0.1:$ssh_port:22" \
        -v "$HM_CACHE_DIR/apt/demo/$platform/archives:/var/cache/apt/archives:rw" \
        -v "$HM_CACHE_DIR/apt/demo/$platform/lists:/var/lib/apt/lists:rw" \
        "$HM_IMAGE_REPO:$platform" /lib/systemd/systemd >/dev/null
fi

cat >"$demo_dir/inventory.yml" <<INV
mailhosts:
  hosts:
    $name:
      ansible_connection: ssh
      ansible_host: 127.0.0.1
      ansible_port: $ssh_port
      ansible_user: root
      ansible_ssh_private_key_file: $demo_dir/admin_key
      ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
      sshd_2fa_users: [demo]
      sshd_2fa_enroll_dest: $secrets_dir/totp
      sshd_2fa_enroll_show_qr: true
      sshd_2fa_totp_scratch_codes: 5
INV

# Like a fresh VPS: sshd, the administrator's key for root, one user.
ansible-playbook -i "$demo_dir/inventory.yml" "$HM_ROOT/scripts/demo-bootstrap.yml" \
    -e hm_demo_dir="$demo_dir"
ansible-playbook -i "$demo_dir/inventory.yml" "$HM_ROOT/playbooks/site.yml"

cat <<MSG

==> The demo host is up: $name (Debian ${platform#debian}), SSH on 127.0.0.1:$ssh_port

Log in as a person would, with the TOTP code and then the password:
    scan $secrets_dir/totp/demo.png (or the code printed above) with an authenticator app
    ssh -p $ssh_port -o PreferredAuthentications=keyboard-interactive demo@127.0.0.1
    Verification code: <6 digits from the app>
    Password: $(cat "$demo_dir/demo_password")
Recovery codes: $secrets_dir/totp/demo-recovery.txt
A password alone is refused:  ssh -p $ssh_port -o PreferredAuthentications=password demo@127.0.0.1
The administrator logs in with a key: ssh -p $ssh_port -i $demo_dir/admin_key root@127.0.0.1
Remove the demo: scripts/demo.sh down
MSG
