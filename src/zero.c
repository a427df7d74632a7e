/*
 * zero.c - state dicts whose weights are not in the file: DeepSpeed ZeRO-3 partitions and
 * other empty placeholders.
 *
 * Under ZeRO stage 3 every rank saves zero_pp_rank_R_mp_rank_00_model_states.pt holding
 * {'module': model.state_dict(), 'buffer_names': [...], 'param_shapes': [...], 'ds_config',
 * 'ds_version', ...}, where each parameter's .data has been replaced by torch.empty(0): the
 * state dict holds 1-d tensors of shape [0] next to whole buffers, and the real values live in
 * the optimizer-state files of all ranks. Judging such a dict reports every parameter as a size
 * mismatch and reads the class count off an empty head; saying what the file is and how to
 * consolidate it is the only useful answer. (ZeRO-1/2 files hold whole parameters and pass.)
 */
#include "sd_int.h"

static bool is_placeholder(const ckpt_sd_entry *e)
{
    return e->is_tensor && e->ndim == 1 && e->shape[0] == 0;
}

int ckpt__sd_placeholders(const ckpt_value *root, const ckpt_sd_candidate *c, const ckpt_sd *sd,
                          ckpt_error *err)
{
    size_t empty = 0, whole = 0;
    for (size_t i = 0; i < sd->n_entries; i++) {
        if (is_placeholder(&sd->entries[i]))
            empty++;
        else if (sd->entries[i].is_tensor)
            whole++;
    }
    /* a few empty tensors are legitimate (an unused bias); a quarter of them is not */
    if (empty < 2 || empty < (empty + whole) / 4)
        return CKPT_OK;
    const char *where = c->path_len ? c->path_str : "the state dict";
    const char *q = c->path_len ? "'" : "";
    bool deepspeed = root && root->type == CKPT_T_DICT &&
                     (ckpt_dict_get(root, "ds_version") || ckpt_dict_get(root, "param_shapes") ||
                      ckpt_dict_get(root, "ds_config"));
    if (deepspeed)
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                         "a DeepSpeed ZeRO-3 partition: %s%s%s holds %zu parameters of shape [0] "
                         "next to %zu whole tensors; the weights are split across the ranks' "
                         "files: consolidate them with the zero_to_fp32.py that DeepSpeed saved "
                         "beside the checkpoint folder ('python zero_to_fp32.py CHECKPOINT_DIR "
                         "pytorch_model.bin') and check its output",
                         q, where, q, empty, whole);
    return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                     "%s%s%s holds %zu tensors of shape [0] next to %zu whole ones: placeholders "
                     "whose weights are not in this file (parameters partitioned away, as "
                     "DeepSpeed ZeRO-3 saves them, or never materialised); save the model's "
                     "state_dict() after gathering its parameters (for ZeRO-3: zero_to_fp32.py)",
                     q, where, q, empty, whole);
}
