"""MiniCPM (MiniCPM-2B) as a reference for exaq's tests: Llama with three scalings.

MiniCPM is not in transformers; its released checkpoints ship their own model code. The
architecture is Llama's decoder (pre-norm RMSNorm, SwiGLU MLP, NeoX RoPE, GQA) plus:
  - the token embeddings multiplied by scale_emb;
  - each residual branch (attention and MLP) multiplied by scale_depth / sqrt(num_hidden_layers)
    before it is added to the residual stream;
  - the final hidden states divided by hidden_size / dim_model_base before the (tied) head.
This module writes those three on top of transformers' Llama classes and registers the
`minicpm` model type with the Auto classes, so from_pretrained (compressed-tensors included)
loads a `model_type: minicpm` directory. Used by make_families.py and check_transformers.py only
(development machine); exaq itself never needs Python.
"""
import math

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaModel


class MiniCPMConfig(LlamaConfig):
    model_type = "minicpm"

    def __init__(self, scale_emb=1.0, scale_depth=1.0, dim_model_base=None, **kw):
        self.scale_emb = scale_emb
        self.scale_depth = scale_depth
        self.dim_model_base = dim_model_base
        super().__init__(**kw)


class MiniCPMDecoderLayer(LlamaDecoderLayer):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.res_scale = config.scale_depth / math.sqrt(config.num_hidden_layers)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, position_embeddings=None, **kwargs):
        residual = hidden_states
        h = self.input_layernorm(hidden_states)
        h, _ = self.self_attn(hidden_states=h, attention_mask=attention_mask,
                              position_ids=position_ids, past_key_values=past_key_values,
                              use_cache=use_cache, position_embeddings=position_embeddings,
                              **kwargs)
        hidden_states = residual + h * self.res_scale
        residual = hidden_states
        h = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + h * self.res_scale


class MiniCPMModel(LlamaModel):
    config_class = MiniCPMConfig

    def __init__(self, config):
        super().__init__(config)
        self.layers = torch.nn.ModuleList(
            [MiniCPMDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.post_init()

    def forward(self, input_ids=None, inputs_embeds=None, **kw):
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids) * self.config.scale_emb
        return super().forward(inputs_embeds=inputs_embeds, **kw)


class MiniCPMForCausalLM(LlamaForCausalLM):
    config_class = MiniCPMConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = MiniCPMModel(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kw):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         inputs_embeds=inputs_embeds, use_cache=False)
        h = out.last_hidden_state
        width = self.config.hidden_size / self.config.dim_model_base
        return CausalLMOutputWithPast(logits=self.lm_head(h / width))


AutoConfig.register("minicpm", MiniCPMConfig)
AutoModelForCausalLM.register(MiniCPMConfig, MiniCPMForCausalLM)
