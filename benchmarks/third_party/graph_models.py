"""Graph models: torch-geometric (GCN, GAT and graph-transformer layers, two each, on a fixed
10-node graph with 8 input features, then a linear head to 4 classes) and egnn-pytorch
(EGNN_Network on token features and 3-D coordinates, then a head). Width: hidden channels =
width (GAT: 2 heads of width / 2, concatenated; TransformerConv: 2 heads of width / 2)."""
from __future__ import annotations

import torch
from torch import nn

from ._spec import Spec, VOCAB, generator, randn

NODES, FEATURES = 10, 8


def graph():
    ring = torch.arange(NODES)
    edges = torch.stack([torch.cat([ring, (ring + 1) % NODES, ring]), torch.cat([(ring + 1) % NODES, ring, (ring + 3) % NODES])])
    return randn(NODES, FEATURES), edges


class PygNet(nn.Module):
    def __init__(self, width: int, kind: str):
        super().__init__()
        import torch_geometric.nn as gnn

        if kind == "gcn":
            self.conv1, self.conv2 = gnn.GCNConv(FEATURES, width), gnn.GCNConv(width, width)
        elif kind == "gat":
            self.conv1, self.conv2 = gnn.GATConv(FEATURES, width // 2, heads=2), gnn.GATConv(width, width // 2, heads=2)
        else:
            self.conv1 = gnn.TransformerConv(FEATURES, width // 2, heads=2)
            self.conv2 = gnn.TransformerConv(width, width // 2, heads=2)
        self.head = nn.Linear(width, 4)

    def forward(self, x, edge_index):
        x = self.conv1(x, edge_index).relu()
        x = self.conv2(x, edge_index).relu()
        return self.head(x)


class EGNNHead(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        from egnn_pytorch import EGNN_Network

        self.egnn = EGNN_Network(num_tokens=VOCAB, dim=width, depth=2, num_nearest_neighbors=4)
        self.head = nn.Linear(width, 4)

    def forward(self, feats, coors):
        feats, coors = self.egnn(feats, coors)
        return self.head(feats)


def egnn_inputs():
    return torch.randint(0, VOCAB, (2, 12), generator=generator(0)), randn(2, 12, 3)


SPECS = {
    "pyg_gcn": Spec("torch-geometric", lambda w: PygNet(w, "gcn"), graph, "hidden channels"),
    "pyg_gat": Spec("torch-geometric", lambda w: PygNet(w, "gat"), graph, "hidden channels (2 heads of width/2)",
                    note="additive attention scores, softmax over neighbours by scatter"),
    "pyg_graph_transformer": Spec("torch-geometric", lambda w: PygNet(w, "transformer"), graph,
                                  "hidden channels (2 heads of width/2)",
                                  note="TransformerConv: q.k as a product summed over channels, scatter softmax"),
    "egnn": Spec("egnn-pytorch", EGNNHead, egnn_inputs, "dim (edge MLP 2 x width)",
                 note="EGNN_Network, 4 nearest neighbours (topk on distances)"),
}
