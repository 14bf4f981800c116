/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ntm_shim.h - the C ABI between the Rust crate (ntm_main.rs and its modules) and the C shim
 * (ntm_shim.c), linked into one module, ntm.ko.
 *
 * Only opaque pointers and scalars cross it, so Rust never depends on a config-dependent
 * struct layout. The binding layer (bindings/) declares these functions, each in the file of
 * its subject: keep them in step. The netlink family's numbers, policies, op table and handlers are generated from
 * kmod/spec/ntm.yaml by scripts/gen-netlink, into ntm_nl_gen.h and ntm_nl_gen.c.
 */
#ifndef NTM_SHIM_H
#define NTM_SHIM_H

#include <linux/types.h>

struct net;
struct net_device;
struct sk_buff;
struct sock;
struct nlattr;
struct genl_info;
struct netlink_callback;
struct spinlock;
struct dst_cache;
struct dst_entry;

/* ---- Rust -> C ---- */

/* module registration */
int ntm_shim_link_register(void);
void ntm_shim_link_unregister(void);
int ntm_shim_genl_register(void);
void ntm_shim_genl_unregister(void);

/* locking, RCU, time */
void ntm_shim_rcu_read_lock(void);
void ntm_shim_rcu_read_unlock(void);
void ntm_shim_local_bh_disable(void);
void ntm_shim_local_bh_enable(void);
void ntm_shim_spin_lock_bh(struct spinlock *lock);
void ntm_shim_spin_unlock_bh(struct spinlock *lock);
void ntm_shim_cond_resched(void);
unsigned long ntm_shim_jiffies(void);
unsigned long ntm_shim_msecs_to_jiffies(u32 ms);
u32 ntm_shim_jiffies_to_msecs(unsigned long j);
void ntm_shim_memzero_explicit(void *p, size_t len);

/* net_device */
void *ntm_shim_dev_state(struct net_device *dev);
void ntm_shim_dev_set_state(struct net_device *dev, void *state);
struct net_device *ntm_shim_dev_get(struct net *net, u32 ifindex);
void ntm_shim_dev_put(struct net_device *dev);
struct net *ntm_shim_dev_net(struct net_device *dev);
int ntm_shim_dev_ifindex(struct net_device *dev);
void ntm_shim_dev_rx_add(struct net_device *dev, unsigned int len);
/* which: see enum ntm_stat in ntm_shim.c and `Stat` in bindings/netdev.rs */
void ntm_shim_dev_stat_inc(struct net_device *dev, int which);
/* idle sweep: queue (force: move an already queued one) on system_power_efficient_wq */
void ntm_shim_sweep_arm(struct net_device *dev, unsigned long delay, bool force);
void ntm_shim_sweep_cancel(struct net_device *dev);

/* sk_buff */
void ntm_shim_kfree_skb(struct sk_buff *skb);
void ntm_shim_consume_skb(struct sk_buff *skb);
unsigned int ntm_shim_skb_len(const struct sk_buff *skb);
unsigned int ntm_shim_skb_headlen(const struct sk_buff *skb);
u8 *ntm_shim_skb_data(const struct sk_buff *skb);
bool ntm_shim_skb_may_pull(struct sk_buff *skb, unsigned int len);
void ntm_shim_skb_pull(struct sk_buff *skb, unsigned int len);
void ntm_shim_skb_push(struct sk_buff *skb, unsigned int len);
void ntm_shim_skb_put(struct sk_buff *skb, unsigned int len);
int ntm_shim_skb_trim(struct sk_buff *skb, unsigned int len);
int ntm_shim_skb_linearize_writable(struct sk_buff *skb);
struct sk_buff *ntm_shim_skb_tx_prepare(struct sk_buff *skb, unsigned int headroom,
					unsigned int tailroom);
int ntm_shim_skb_outer_source(const struct sk_buff *skb, u8 addr[16], u16 *port);
/* a new linear skb of len zeroed bytes with headroom free in front (process context) */
struct sk_buff *ntm_shim_skb_alloc(unsigned int headroom, unsigned int len);
int ntm_shim_rx_deliver(struct net_device *dev, struct sk_buff *skb, bool ipv6);
/*
 * Routes to endpoints, cached per tunnel. ntm_shim_route (bottom halves disabled): family 4 or
 * 6, addresses in 16 bytes; on success *dst holds a reference (given to route_xmit, which
 * consumes it and the skb, or dropped with route_put) and saddr the source; *fresh when it was
 * looked up, not cached: the caller may then keep it (route_keep).
 */
struct dst_cache *ntm_shim_dst_cache_new(void);
void ntm_shim_dst_cache_free(struct dst_cache *c);
void ntm_shim_dst_cache_reset(struct dst_cache *c);
int ntm_shim_route(struct net_device *dev, struct sock *sk, struct dst_cache *c, int family,
		   const u8 daddr[16], u16 dport, u8 saddr[16], struct dst_entry **dst, bool *fresh);
void ntm_shim_route_keep(struct dst_cache *c, int family, struct dst_entry *dst, const u8 saddr[16]);
void ntm_shim_route_put(struct dst_entry *dst);
void ntm_shim_route_xmit(struct net_device *dev, struct sock *sk, struct sk_buff *skb, int family,
			 struct dst_entry *dst, const u8 saddr[16], const u8 daddr[16], u16 dport);

/* UDP sockets handed over by userspace */
struct sock *ntm_shim_sock_attach(struct net_device *dev, int fd, int family, const char **why,
				  int *err);
void ntm_shim_sock_detach(struct sock *sk);
void ntm_shim_sock_put(struct sock *sk);
bool ntm_shim_sock_dead(const struct sock *sk);
struct net_device *ntm_shim_sock_dev(struct sock *sk);

/* generic netlink: requests */
struct nlattr *ntm_shim_info_attr(const struct genl_info *info, int type);
struct net *ntm_shim_info_net(const struct genl_info *info);
void ntm_shim_info_error(const struct genl_info *info, const char *msg, const struct nlattr *bad);
void ntm_shim_info_missing(const struct genl_info *info, const struct nlattr *nest, int type);
int ntm_shim_info_parse_tunnel(const struct genl_info *info, const struct nlattr *nest,
			       struct nlattr **tb);
const void *ntm_shim_nla_data(const struct nlattr *nla);
int ntm_shim_nla_len(const struct nlattr *nla);
const struct genl_info *ntm_shim_cb_info(struct netlink_callback *cb);
long *ntm_shim_cb_args(struct netlink_callback *cb);

/* generic netlink: messages */
struct sk_buff *ntm_shim_msg_new(bool atomic);
void ntm_shim_msg_free(struct sk_buff *msg);
void *ntm_shim_msg_put_reply(struct sk_buff *msg, const struct genl_info *info, u8 cmd);
void *ntm_shim_msg_put_dump(struct sk_buff *msg, struct netlink_callback *cb, u8 cmd);
void *ntm_shim_msg_put_event(struct sk_buff *msg, u8 cmd);
void ntm_shim_msg_end(struct sk_buff *msg, void *hdr);
void ntm_shim_msg_cancel(struct sk_buff *msg, void *hdr);
int ntm_shim_msg_reply(struct sk_buff *msg, const struct genl_info *info);
int ntm_shim_msg_multicast(struct sk_buff *msg, struct net *net, bool atomic);
int ntm_shim_nla_put(struct sk_buff *msg, int type, const void *data, int len);
int ntm_shim_nla_put_uint(struct sk_buff *msg, int type, u64 value);
struct nlattr *ntm_shim_nest_start(struct sk_buff *msg, int type);
void ntm_shim_nest_end(struct sk_buff *msg, struct nlattr *nest);

/*
 * ---- C -> Rust ----
 *
 * #[no_mangle] extern "C" functions next to the code they enter; their pointer arguments are
 * never NULL, and each is typed in Rust by what the callback may do with it (bindings/).
 */

/* device.rs: newlink, the destructor (and newlink's error path), net_device_ops */
int ntm_rs_dev_new(struct net_device *dev);
void ntm_rs_dev_free(struct net_device *dev);
int ntm_rs_dev_open(struct net_device *dev);
int ntm_rs_dev_stop(struct net_device *dev);
void ntm_rs_dev_uninit(struct net_device *dev);
/* send.rs: one segment (consumed) */
void ntm_rs_xmit(struct sk_buff *skb, struct net_device *dev);
/* timers.rs: the sweep's delayed work */
void ntm_rs_sweep(struct net_device *dev);
/* receive.rs, socket.rs: the encap hooks of the sockets taken over */
int ntm_rs_encap_rcv(struct sock *sk, struct sk_buff *skb);
void ntm_rs_encap_destroy(struct sock *sk);

#endif /* NTM_SHIM_H */
