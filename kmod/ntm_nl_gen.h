/* SPDX-License-Identifier: GPL-2.0 */
/* generated from kmod/spec/ntm.yaml by scripts/gen-netlink; do not edit */

#ifndef NTM_NL_GEN_H
#define NTM_NL_GEN_H

#include <net/netlink.h>
#include <net/genetlink.h>

#define NTM_FAMILY_NAME "ntm"
#define NTM_FAMILY_VERSION 1

#define NTM_KEY_LEN 32
#define NTM_LABEL_MAX_LEN 255

/* Why a tunnel went away. */
enum ntm_destroy_reason {
	/* It carried no data for the device's idle timeout. */
	NTM_DESTROY_REASON_IDLE,
	/* Userspace deleted it (or replaced it with another tunnel to the same peer). */
	NTM_DESTROY_REASON_DELETED,
	/* Its device went down or away. */
	NTM_DESTROY_REASON_DEVICE_DOWN,
	/* The module could not keep it (e.g. the socket went away). */
	NTM_DESTROY_REASON_ERROR,
};

/* Attributes of the `tunnel` set. */
enum {
	NTM_A_TUNNEL_LOCAL_ID = 1,
	NTM_A_TUNNEL_REMOTE_ID,
	NTM_A_TUNNEL_VIP4,
	NTM_A_TUNNEL_VIP6,
	NTM_A_TUNNEL_ENDPOINT_IP4,
	NTM_A_TUNNEL_ENDPOINT_IP6,
	NTM_A_TUNNEL_ENDPOINT_PORT,
	NTM_A_TUNNEL_SEND_KEY,
	NTM_A_TUNNEL_RECV_KEY,
	NTM_A_TUNNEL_LABEL,
	NTM_A_TUNNEL_IDLE_MS,
	NTM_A_TUNNEL_TX_PACKETS,
	NTM_A_TUNNEL_TX_BYTES,
	NTM_A_TUNNEL_RX_PACKETS,
	NTM_A_TUNNEL_RX_BYTES,
	NTM_A_TUNNEL_RX_DROPPED,
	NTM_A_TUNNEL_REASON,

	__NTM_A_TUNNEL_MAX,
	NTM_A_TUNNEL_MAX = (__NTM_A_TUNNEL_MAX - 1)
};

/* Attributes of the `ntm` set. */
enum {
	NTM_A_IFINDEX = 1,
	NTM_A_SOCK_FD4,
	NTM_A_SOCK_FD6,
	NTM_A_IDLE_TIMEOUT_MS,
	NTM_A_TUNNEL,
	NTM_A_MISS_VIP4,
	NTM_A_MISS_VIP6,
	NTM_A_RX_ORPHANS,

	__NTM_A_MAX,
	NTM_A_MAX = (__NTM_A_MAX - 1)
};

/* Commands and notifications. */
enum {
	NTM_CMD_DEV_SET = 1,
	NTM_CMD_DEV_GET,
	NTM_CMD_TUNNEL_NEW,
	NTM_CMD_TUNNEL_SET,
	NTM_CMD_TUNNEL_GET,
	NTM_CMD_TUNNEL_DEL,
	NTM_CMD_TUNNEL_DESTROYED_NTF,
	NTM_CMD_TUNNEL_MISS_NTF,
	NTM_CMD_ENDPOINT_CHANGED_NTF,
	NTM_CMD_TUNNEL_KEEPALIVE,

	__NTM_CMD_MAX,
	NTM_CMD_MAX = (__NTM_CMD_MAX - 1)
};

#define NTM_MCGRP_EVENTS "events"

enum {
	NTM_NLGRP_EVENTS,
};

/* Policies of the nested attribute sets: parse nests with them. */
extern const struct nla_policy ntm_tunnel_nl_policy[NTM_A_TUNNEL_MAX + 1];
extern const struct nla_policy ntm_tunnel_input_nl_policy[NTM_A_TUNNEL_MAX + 1];

/* The family's operations and multicast groups (the shim defines the family). */
extern const struct genl_split_ops ntm_nl_ops[8];
extern const struct genl_multicast_group ntm_nl_mcgrps[1];

/* The handlers, in Rust (kmod/netlink_gen.rs). */
int ntm_nl_dev_set_doit(struct sk_buff *skb, struct genl_info *info);
int ntm_nl_dev_get_doit(struct sk_buff *skb, struct genl_info *info);
int ntm_nl_tunnel_new_doit(struct sk_buff *skb, struct genl_info *info);
int ntm_nl_tunnel_set_doit(struct sk_buff *skb, struct genl_info *info);
int ntm_nl_tunnel_get_doit(struct sk_buff *skb, struct genl_info *info);
int ntm_nl_tunnel_get_dumpit(struct sk_buff *skb, struct netlink_callback *cb);
int ntm_nl_tunnel_del_doit(struct sk_buff *skb, struct genl_info *info);
int ntm_nl_tunnel_keepalive_doit(struct sk_buff *skb, struct genl_info *info);

#endif /* NTM_NL_GEN_H */
